//! Mail as a holding of personal data: what a service sends is labelled
//! with the service and a keyed blind index of each recipient's address
//! (the same index the stores look email up by), so an outbox keeps beside
//! each file what erasure needs to find it, and nothing it could give away;
//! and the files a service wrote to the outbox expire with the sweep.
//!
//! Every service is handed a [`ServiceMailer`] as its `Context::mailer`, so
//! a service only ever calls `send`.

use std::{sync::Arc, time::Duration};

use custodian_mail::{Label, MailError, Mailer, OutboxMailer, OutgoingMail};
use custodian_privacy::{
    audit::Event, normalize, retention::SweepCounts, vault::EMAIL, vault::Vault,
};
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome},
    privacy::v1::{Controller, DataCategory, DataMapField, DataMapResource, Erasure, Lookup},
};
use custodian_runtime::{
    ApiError,
    metrics::{self, Counter, KeyValue, UpDownCounter},
    time::micros,
};
use futures::future::BoxFuture;

use crate::{call::Call, retention::Sweep};

/// A service's mailer: the process's own, labelling what it sends.
pub struct ServiceMailer {
    service: &'static str,
    vault: Vault,
    inner: Arc<dyn Mailer>,
}

impl ServiceMailer {
    pub fn new(service: &'static str, vault: Vault, inner: Arc<dyn Mailer>) -> Self {
        // Every service's series exist from the start, at 0: an alert on
        // failures must not wait for the first one to see the series.
        let labels = [KeyValue::new("custodian.service", service)];
        MAIL.sent.add(0, &labels);
        MAIL.sending.add(0, &labels);
        MAIL.failed.add(
            0,
            &[
                labels[0].clone(),
                KeyValue::new("custodian.mail.transient", true),
            ],
        );
        Self {
            service,
            vault,
            inner,
        }
    }
}

/// Mail sent, failed and being sent, by service: the suite sends as it
/// goes (no queue), so what waits is what is being handed to the SMTP
/// server or written to the outbox now.
struct MailMetrics {
    sent: Counter<u64>,
    failed: Counter<u64>,
    sending: UpDownCounter<i64>,
}

static MAIL: std::sync::LazyLock<MailMetrics> = std::sync::LazyLock::new(|| {
    let meter = metrics::meter();
    MailMetrics {
        sent: meter
            .u64_counter("custodian.mail.sent")
            .with_unit("{message}")
            .with_description("Mail handed to the SMTP server or written to the outbox, by service")
            .build(),
        failed: meter
            .u64_counter("custodian.mail.failed")
            .with_unit("{message}")
            .with_description(
                "Mail that could not be sent, by service and whether the failure was transient",
            )
            .build(),
        sending: meter
            .i64_up_down_counter("custodian.mail.sending")
            .with_unit("{message}")
            .with_description(
                "Mail being sent now (waiting on the SMTP server or the outbox), by service",
            )
            .build(),
    }
});

/// The keyed blind index of an address, as a store's `email_key` has it.
pub fn recipient_key(vault: &Vault, address: &str) -> String {
    // An address the stores' normaliser refuses is not one of theirs;
    // it is still labelled, the way an address is compared anyway.
    let normal = normalize::email(address).unwrap_or_else(|_| address.trim().to_lowercase());
    vault.blind_index(EMAIL, &normal)
}

impl Mailer for ServiceMailer {
    fn send(&self, mail: &OutgoingMail) -> BoxFuture<'_, Result<(), MailError>> {
        let label = Label {
            service: self.service.to_owned(),
            recipients: mail
                .to
                .iter()
                .map(|to| recipient_key(&self.vault, &to.email))
                .collect(),
        };
        let mail = mail.clone();
        Box::pin(async move {
            let service = [KeyValue::new("custodian.service", self.service)];
            MAIL.sending.add(1, &service);
            let sent = self.inner.send_labelled(&mail, &label).await;
            MAIL.sending.add(-1, &service);
            match &sent {
                Ok(()) => MAIL.sent.add(1, &service),
                Err(err) => MAIL.failed.add(
                    1,
                    &[
                        service[0].clone(),
                        KeyValue::new("custodian.mail.transient", err.is_transient()),
                    ],
                ),
            }
            sent
        })
    }

    fn outbox(&self) -> Option<&OutboxMailer> {
        self.inner.outbox()
    }
}

fn outbox_failed(err: MailError) -> ApiError {
    ApiError::Unavailable(format!("the mail outbox: {err}; retry"))
}

/// Deletes the outbox files `service` sent to the addresses whose blind
/// indexes are `email_keys`; nothing without an outbox.
pub async fn erase_mail(
    mailer: &dyn Mailer,
    service: &str,
    email_keys: &[String],
) -> Result<u64, ApiError> {
    match mailer.outbox() {
        Some(outbox) => outbox
            .erase(service, email_keys)
            .await
            .map_err(outbox_failed),
        None => Ok(0),
    }
}

/// The outbox as the data map shows it, for a service that mails into it.
pub fn holding(category: DataCategory, retention: Duration) -> DataMapResource {
    DataMapResource {
        message: "mail outbox (.eml files instead of SMTP; erased with the recipient)".to_owned(),
        pattern: "outbox/{file}".to_owned(),
        data_category: category as i32,
        controller: Controller::Company as i32,
        personal_fields: vec![DataMapField {
            path: "the message: recipients' names and addresses, what was written to them"
                .to_owned(),
            visible_to: Vec::new(),
            lookup: Lookup::Email as i32,
            encrypted_at_rest: false,
        }],
        default_retention: Some(prost_types::Duration {
            seconds: retention.as_secs() as i64,
            nanos: 0,
        }),
        retention_clock: "when it was written".to_owned(),
        tenant_may_set_retention: false,
        erasure: Erasure::Delete as i32,
        purposes: Vec::new(),
    }
}

/// A service's sweep, and after it the expiry of the outbox files it
/// wrote: counted in the category its mail belongs to, audited.
pub struct MailSweep {
    pub inner: Arc<dyn Sweep>,
    pub mailer: Arc<dyn Mailer>,
    pub category: DataCategory,
    pub retention: Duration,
    pub privacy: custodian_privacy::Privacy,
}

impl Sweep for MailSweep {
    fn service(&self) -> &'static str {
        self.inner.service()
    }

    fn sweep<'a>(
        &'a self,
        now: i64,
        by: Option<&'a Call>,
    ) -> BoxFuture<'a, Result<SweepCounts, ApiError>> {
        Box::pin(async move {
            let mut counts = self.inner.sweep(now, by).await?;
            let Some(outbox) = self.mailer.outbox() else {
                return Ok(counts);
            };
            let expired = outbox
                .expire(self.service(), now - micros(self.retention))
                .await
                .map_err(outbox_failed)?;
            if expired == 0 {
                return Ok(counts);
            }
            let actor = match by {
                Some(call) => self
                    .privacy
                    .event(&call.access, "", "", &[], AuditOutcome::Ok),
                None => Event {
                    caller: "custodian:retention".to_owned(),
                    purpose: "retention".to_owned(),
                    method: "schedule".to_owned(),
                    ..Event::new(AuditAction::Sweep, AuditOutcome::Ok)
                },
            };
            self.privacy
                .audit
                .record(Event {
                    time: now,
                    resource: format!("{}/outbox", self.service()),
                    detail: format!("{expired} mails expired from the outbox"),
                    ..actor
                })
                .await?;
            let expired = expired as i64;
            match counts.iter_mut().find(|(c, _)| *c == self.category) {
                Some((_, n)) => *n += expired,
                None => counts.push((self.category, expired)),
            }
            Ok(counts)
        })
    }
}
