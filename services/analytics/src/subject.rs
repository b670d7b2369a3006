//! Analytics' part in data-subject rights: consent records through the
//! kit (by their name, "consents/{consent}", which the visitor's cookie
//! holds), and usage events by the user's name.

use custodian_kit::{
    Call,
    subject::{StoreSubjectData, SubjectData},
};
use custodian_proto::{
    common::v1::{SubjectIdentifier, subject_identifier},
    subject::v1::{ExportSubjectDataResponse, FieldCorrection, SubjectRecord},
};
use futures::future::BoxFuture;
use tonic::Status;

use crate::usage::{Usage, user_tenant};

pub struct AnalyticsSubject {
    pub consents: StoreSubjectData,
    pub usage: Usage,
}

/// The user's name, when the subject is an authorized user.
fn user_of(subject: &Option<SubjectIdentifier>) -> Option<String> {
    match subject.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(subject_identifier::Kind::Id(name)) if user_tenant(name).is_some() => {
            Some(name.clone())
        }
        _ => None,
    }
}

impl SubjectData for AnalyticsSubject {
    fn locate<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(async move {
            match user_of(&subject) {
                Some(user) => Ok(self.usage.locate(call, &user).await?),
                None => self.consents.locate(call, subject).await,
            }
        })
    }

    fn export<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<ExportSubjectDataResponse>, Status>> {
        Box::pin(async move {
            match user_of(&subject) {
                Some(user) => Ok(self.usage.export(call, &user).await?),
                None => self.consents.export(call, subject).await,
            }
        })
    }

    fn rectify<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
        corrections: Vec<FieldCorrection>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(async move {
            match user_of(&subject) {
                // Usage events record what happened; there is nothing in
                // them to correct.
                Some(_) => Ok(Vec::new()),
                None => self.consents.rectify(call, subject, corrections).await,
            }
        })
    }

    fn erase<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(async move {
            match user_of(&subject) {
                Some(user) => Ok(self.usage.erase(call, &user).await?),
                None => self.consents.erase(call, subject).await,
            }
        })
    }
}
