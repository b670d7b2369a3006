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
use custodian_runtime::{error::Violations, time::to_timestamp};
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

    /// Records a decision for `call`.
    pub async fn record(
        &self,
        call: &Call,
        mut request: RecordConsentRequest,
    ) -> Result<Shown<Consent>, Status> {
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
        let site = self.sites.named(&consent.site, "consent.site").await?;
        let now = self.records.store().now();
        consent.policy_version = self.policy_version(now).await?;
        consent.ip_prefix = ip
            .map(|ip| door::truncate_ip(ip, site.ipv4_bytes_kept, site.ipv6_bits_kept))
            .unwrap_or_default();
        if !request.user_agent.is_empty() {
            let (browser, major, os, _) = door::parse_agent(&request.user_agent);
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
