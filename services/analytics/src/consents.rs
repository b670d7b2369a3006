//! Visitors' cookie consents: records under the kit (sealed, audited,
//! erasable, exported), each with the privacy-policy version in force when
//! it was given, as identity publishes them.

use custodian_kit::{Call, Idempotency, New, Records, Sensitive, Shown, peers::Peers, respond};
use custodian_proto::{
    analytics::v1::{
        Consent, ConsentState, GetConsentRequest, RecordConsentRequest,
        consent_service_server::ConsentService,
    },
    identity::v1::{GetPolicyVersionInForceRequest, policy_service_client::PolicyServiceClient},
};
use custodian_runtime::{ApiError, error::Violations, time::to_timestamp};
use tonic::{Request, Response, Status};

use crate::{door, ingest::OWN_PURPOSE, sites::Sites};

/// Records and reads consents.
#[derive(Clone)]
pub struct Consents {
    pub records: Records<Consent>,
    pub sites: Sites,
    pub peers: Peers,
}

impl Consents {
    /// The version of the privacy policy in force now, "" when none was
    /// ever published. Identity not answering is UNAVAILABLE: a consent is
    /// not recorded without knowing what it was given under.
    async fn policy_version(&self, now: i64) -> Result<String, Status> {
        // Published versions are public facts; the service's own credential
        // reads them, for anonymous browsers as for callers.
        let channel = self.peers.own("identity", OWN_PURPOSE)?;
        let answer = PolicyServiceClient::new(channel)
            .get_policy_version_in_force(GetPolicyVersionInForceRequest {
                time: Some(to_timestamp(now)),
            })
            .await;
        match answer {
            Ok(version) => Ok(version.into_inner().name),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(String::new()),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "identity did not say which policy version is in force");
                Err(Status::unavailable(
                    "the policy version in force cannot be read now; retry later",
                ))
            }
        }
    }

    /// The checks every decision passes before its site is looked up, so
    /// a bad one is refused alike for every site, known or not.
    fn check(&self, mut request: RecordConsentRequest) -> Result<Checked, Status> {
        let request_id = std::mem::take(&mut request.request_id);
        let idempotency = Idempotency::of("RecordConsent", "", &request_id, &request)?;
        let mut consent = request.consent.take().unwrap_or_default();
        let mut v = Violations::new();
        self.records
            .prepare(&mut consent, "consent", Sensitive::Refuse, &mut v)?;
        if !matches!(
            ConsentState::try_from(consent.decision),
            Ok(ConsentState::Granted | ConsentState::Refused)
        ) {
            v.add("consent.decision", "must be granted or refused");
        }
        if consent.site.is_empty() {
            v.add("consent.site", "is required");
        }
        let ip = if request.client_ip.is_empty() {
            None
        } else {
            match request.client_ip.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    v.add("client_ip", "must be an IPv4 or IPv6 address");
                    None
                }
            }
        };
        v.finish()?;
        Ok(Checked {
            consent,
            ip,
            user_agent: request.user_agent,
            idempotency,
        })
    }

    /// Records a decision for `call`.
    pub async fn record(
        &self,
        call: &Call,
        request: RecordConsentRequest,
    ) -> Result<Shown<Consent>, Status> {
        let Checked {
            mut consent,
            ip,
            user_agent,
            idempotency,
        } = self.check(request)?;
        let site = self.sites.named(&consent.site, "consent.site").await?;
        let now = self.records.store().now();
        consent.policy_version = self.policy_version(now).await?;
        consent.ip_prefix = ip
            .map(|ip| door::truncate_ip(ip, site.ipv4_bytes_kept, site.ipv6_bits_kept))
            .unwrap_or_default();
        if !user_agent.is_empty() {
            let (browser, major, os, _) = door::parse_agent(&user_agent);
            consent.browser = format!("{browser} {major} / {os}").replace("  ", " ");
        }
        let stored = self
            .records
            .create(
                call,
                New {
                    tenant_id: String::new(),
                    parent_id: String::new(),
                    message: consent,
                    idempotency,
                },
            )
            .await?;
        Ok(self.records.shown(call, &stored)?)
    }

    /// Answers a browser's decision for a domain that is not a registered
    /// site as one for a site is answered, so that the beacon does not tell
    /// which sites exist: the same checks, the same read of the policy
    /// version, a name of the same shape, and the same name again for a
    /// retry (a different request under the same key is refused alike).
    /// No consent is stored or counted; only the idempotency key a real
    /// decision leaves too, which expires as theirs do. Returns the name and
    /// the policy version.
    pub async fn record_for_unknown_site(
        &self,
        request: RecordConsentRequest,
    ) -> Result<(String, String), Status> {
        let Checked { idempotency, .. } = self.check(request)?;
        let store = self.records.store();
        let policy_version = self.policy_version(store.now()).await?;
        let Some(idempotency) = idempotency else {
            return Ok((fresh_name(), policy_version));
        };
        if let Some(name) = store.replayed(&idempotency).await? {
            return Ok((name, policy_version));
        }
        let name = fresh_name();
        let mut tx = store.db().pool().begin().await.map_err(ApiError::from)?;
        let ours = store.remember(&mut tx, &idempotency, &name).await?;
        tx.commit().await.map_err(ApiError::from)?;
        if ours {
            return Ok((name, policy_version));
        }
        // A retry at the same moment got there first: its name.
        let name = store
            .replayed(&idempotency)
            .await?
            .ok_or_else(|| Status::unavailable("retry the decision"))?;
        Ok((name, policy_version))
    }
}

/// A consent's name as the kit makes one.
fn fresh_name() -> String {
    format!("consents/{}", uuid::Uuid::now_v7())
}

/// A decision that passed [`Consents::check`].
struct Checked {
    consent: Consent,
    ip: Option<std::net::IpAddr>,
    user_agent: String,
    idempotency: Option<Idempotency>,
}

/// `custodian.analytics.v1.ConsentService`.
#[derive(Clone)]
pub struct ConsentApi {
    pub consents: Consents,
}

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
    ) -> Result<Response<Consent>, Status> {
        let call = Call::of(&request)?;
        let Shown { message, withheld } = self.consents.record(&call, request.into_inner()).await?;
        Ok(respond(message, &withheld))
    }

    async fn get_consent(
        &self,
        request: Request<GetConsentRequest>,
    ) -> Result<Response<Consent>, Status> {
        let call = Call::of(&request)?;
        let name = request.into_inner().name;
        let Shown { message, withheld } = self.consents.records.read(&call, &name, "name").await?;
        Ok(respond(message, &withheld))
    }
}
