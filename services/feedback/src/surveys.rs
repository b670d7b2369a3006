//! The surveys part of the feedback service: `custodian.feedback.v1.SurveyService`.
//!
//! "The information obtained is used in an aggregated, non-personally
//! identifiable form", kept by construction:
//!
//! - who was invited and what was answered are stored apart. An invitation
//!   is a kit record (the respondent sealed, found again for their rights);
//!   its link (the token's hash, the segment values until the answer, then
//!   the response's id) lives in a table of its own only while the survey
//!   is open, and every link of a survey is deleted when it closes. A
//!   response holds a random id, the survey and the segment values: no
//!   person, no time, nothing that orders it among the others;
//! - no message that carries one response's answers is ever an output:
//!   [`SurveyAnswer`] is only in `SubmitResponseRequest`, and a test walks
//!   every method's output type to keep it so;
//! - results only in aggregate, k-anonymous, with a guard against
//!   differencing (see [`results`]), from the responses while they are kept
//!   and from the aggregates made at close once they are not;
//! - free text is refused when it holds sensitive data, as every other
//!   field is, and is sealed at rest under a data key of the survey's own
//!   (see [`TextKey`]), destroyed with the responses;
//! - responses are deleted 30 days after their survey closes.

mod results;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use custodian_kit::{
    Arg, Binding, Call, Context, DECLARATIONS, Filter, Idempotency, New, Query, Records, Sensitive,
    Store, fields, respond, subject::SubjectData,
};
use custodian_privacy::{
    audit::Event,
    crypto::DataKey,
    normalize,
    retention::{SweepCounts, default_retention},
    vault::Vault,
};
use custodian_proto::{
    audit::v1::{AuditAction, AuditOutcome},
    common::v1::{Controller, SubjectIdentifier, controller, subject_identifier},
    feedback::v1::{
        CloseSurveyRequest, CreateInvitationRequest, CreateInvitationResponse, CreateSurveyRequest,
        DeleteSurveyRequest, GetSurveyRequest, GetSurveyResultsRequest, ListSurveysRequest,
        ListSurveysResponse, OpenSurveyRequest, SubmitResponseRequest, SubmitResponseResponse,
        Survey, SurveyInvitation, SurveyResults, UpdateSurveyRequest,
        survey::State,
        survey_answer,
        survey_question::Kind,
        survey_service_server::{SurveyService, SurveyServiceServer},
    },
    privacy::v1::{DataCategory, Lookup},
    subject::v1::{ExportSubjectDataResponse, FieldCorrection, SubjectRecord},
};
use custodian_runtime::{
    ApiError,
    error::Violations,
    paging::Page,
    server::{Limits, service_name},
    time::{micros, to_timestamp},
};
use futures::future::BoxFuture;
use prost::Message as _;
use prost_reflect::ReflectMessage as _;
use sha2::{Digest as _, Sha256};
use sqlx::Row as _;
use tonic::{Request, Response, Status, service::RoutesBuilder};

use results::Value;

const INVITATIONS: &str = "feedback_survey_invitations";
/// k when a survey does not set it.
const DEFAULT_K: i32 = 5;
/// k is never below this.
const MIN_K: i32 = 3;
const MAX_K: i32 = 1000;

fn grpc_service() -> &'static str {
    service_name::<SurveyServiceServer<Api>>()
}

/// This part of the service: its records, handlers and duties.
pub struct Part {
    api: Api,
}

impl Part {
    /// Its kit resources (records sealed, audited and erased by the kit).
    pub fn bindings() -> Vec<Arc<Binding>> {
        vec![Binding::of::<SurveyInvitation>(
            INVITATIONS,
            grpc_service(),
            None,
        )]
    }

    pub fn new(_context: &Context, store: &Store) -> Self {
        let binding = store
            .bindings()
            .iter()
            .find(|b| b.table == INVITATIONS)
            .cloned()
            .unwrap_or_else(|| Self::bindings().remove(0));
        Self {
            api: Api {
                store: store.clone(),
                invitations: store.records(&binding),
            },
        }
    }

    /// Full names of its gRPC services.
    pub fn grpc_services() -> Vec<&'static str> {
        vec![grpc_service()]
    }

    pub fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        routes.add_service(
            SurveyServiceServer::new(self.api.clone())
                .max_decoding_message_size(limits.max_message_bytes),
        );
    }

    /// Its part in data-subject rights beyond the kit's own records: the
    /// link of a person's invitation to their response, and their free text.
    pub fn subject_data(&self) -> Option<Arc<dyn SubjectData>> {
        Some(Arc::new(SurveySubject {
            api: self.api.clone(),
        }))
    }

    /// Seals the free text an older version left in plaintext; at start-up,
    /// before anything is served. Returns how many answers it sealed.
    pub async fn seal_plaintext(&self) -> Result<u64, ApiError> {
        self.api.seal_plaintext().await
    }

    /// Deletes the responses of surveys closed more than 30 days ago (their
    /// aggregates stay), and links whose invitation is gone.
    pub fn sweep<'a>(
        &'a self,
        now: i64,
        by: Option<&'a Call>,
    ) -> BoxFuture<'a, Result<SweepCounts, ApiError>> {
        Box::pin(self.api.sweep(now, by))
    }
}

/// The handlers.
#[derive(Clone)]
pub struct Api {
    store: Store,
    invitations: Records<SurveyInvitation>,
}

/// A stored survey.
#[derive(Debug, Clone)]
struct SurveyRow {
    id: String,
    state: State,
    /// Title, description, questions and k; nothing else.
    content: Survey,
    create_time: i64,
    update_time: i64,
    open_time: Option<i64>,
    close_time: Option<i64>,
    responses_gone: bool,
}

/// The data key that seals one survey's free text, and the vault it is
/// used through.
///
/// The key is the survey's, not the respondent's: a response is unlinked
/// from its respondent at close, and a key per respondent would be that
/// link again. One key per survey lets the sweep (or a deletion) make
/// every copy of a survey's text unreadable, backups included, by
/// destroying it. The associated data names the answer's place, so a
/// sealed text copied to another answer does not open.
struct TextKey {
    vault: Vault,
    key: DataKey,
}

impl TextKey {
    fn aad(survey_id: &str, response_id: &str, question: &str) -> String {
        format!("feedback_survey_answers/{survey_id}/{response_id}/{question}")
    }

    fn seal(&self, survey_id: &str, response_id: &str, question: &str, text: &str) -> String {
        self.vault.seal(
            &self.key,
            text.as_bytes(),
            &Self::aad(survey_id, response_id, question),
        )
    }

    fn open(
        &self,
        survey_id: &str,
        response_id: &str,
        question: &str,
        sealed: &str,
    ) -> Result<String, ApiError> {
        let bytes = self.vault.open(
            &self.key,
            sealed,
            &Self::aad(survey_id, response_id, question),
        )?;
        String::from_utf8(bytes).map_err(ApiError::internal)
    }
}

/// A survey's free text sealed, but its key gone: keys are destroyed only
/// together with the text they seal, so this is a bug.
fn key_gone() -> ApiError {
    ApiError::internal(std::io::Error::other(
        "a survey's free text is sealed under a key that is gone",
    ))
}

impl SurveyRow {
    fn name(&self) -> String {
        format!("surveys/{}", self.id)
    }

    fn k(&self) -> usize {
        usize::try_from(self.content.min_respondents.max(MIN_K)).unwrap_or(DEFAULT_K as usize)
    }

    fn to_proto(&self) -> Survey {
        Survey {
            name: self.name(),
            state: self.state as i32,
            create_time: Some(to_timestamp(self.create_time)),
            update_time: Some(to_timestamp(self.update_time)),
            open_time: self.open_time.map(to_timestamp),
            close_time: self.close_time.map(to_timestamp),
            ..self.content.clone()
        }
    }
}

fn encode(content: &Survey) -> String {
    hex::encode(content.encode_to_vec())
}

fn decode(body: &str) -> Result<Survey, ApiError> {
    let bytes = hex::decode(body).map_err(ApiError::internal)?;
    Survey::decode(bytes.as_slice()).map_err(ApiError::internal)
}

/// The id of "surveys/{survey}" (its form already checked by the stack).
fn survey_id(name: &str, field: &str) -> Result<String, ApiError> {
    name.strip_prefix("surveys/")
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .map(|id| id.to_string())
        .ok_or_else(|| ApiError::invalid(field, "must be \"surveys/{survey}\""))
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
    Ok(hex::encode(buf))
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Fisher-Yates with the operating system's randomness: free text comes
/// out in no order that could match the order it came in.
fn shuffle(items: &mut Vec<String>) {
    for i in (1..items.len()).rev() {
        let mut buf = [0u8; 8];
        if getrandom::fill(&mut buf).is_err() {
            // No randomness: no text rather than text in order.
            items.clear();
            return;
        }
        let j = (u64::from_le_bytes(buf) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn members_text(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(",")
}

fn members_of(text: &str) -> BTreeSet<String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks a survey's content (already normalised by its declarations).
fn check_survey(survey: &mut Survey, v: &mut Violations) {
    if survey.title.trim().is_empty() {
        v.add("survey.title", "is required");
    }
    if survey.min_respondents == 0 {
        survey.min_respondents = DEFAULT_K;
    }
    if !(MIN_K..=MAX_K).contains(&survey.min_respondents) {
        v.add(
            "survey.min_respondents",
            format!("must be from {MIN_K} to {MAX_K}"),
        );
    }
    let mut ids = BTreeSet::new();
    for (i, q) in survey.questions.iter().enumerate() {
        let at = format!("survey.questions[{i}]");
        if q.id.is_empty() {
            v.add(format!("{at}.id"), "is required");
        } else if !ids.insert(q.id.clone()) {
            v.add(format!("{at}.id"), "is the id of another question");
        }
        if q.text.trim().is_empty() {
            v.add(format!("{at}.text"), "is required");
        }
        let kind = Kind::try_from(q.kind).unwrap_or(Kind::Unspecified);
        match kind {
            Kind::Unspecified => v.add(format!("{at}.kind"), "is required"),
            Kind::SingleChoice | Kind::MultipleChoice => {
                let distinct: BTreeSet<&String> = q.options.iter().collect();
                if q.options.len() < 2 || distinct.len() != q.options.len() {
                    v.add(
                        format!("{at}.options"),
                        "a choice question needs 2 to 20 distinct options",
                    );
                }
                if q.options.iter().any(|o| o.trim().is_empty()) {
                    v.add(format!("{at}.options"), "must not be empty");
                }
            }
            _ => {
                if !q.options.is_empty() {
                    v.add(
                        format!("{at}.options"),
                        "only choice questions have options",
                    );
                }
            }
        }
    }
}

/// Normalises a survey's values by their declarations (lines, text, the
/// sensitive-data guard) and keeps only its content.
fn prepare_survey(survey: Survey, v: &mut Violations) -> Result<Survey, ApiError> {
    let mut dynamic = survey.transcode_to_dynamic();
    fields::prepare(&DECLARATIONS, &mut dynamic, "survey", Sensitive::Refuse, v);
    let mut survey: Survey = dynamic.transcode_to().map_err(ApiError::internal)?;
    check_survey(&mut survey, v);
    Ok(Survey {
        title: survey.title,
        description: survey.description,
        questions: survey.questions,
        min_respondents: survey.min_respondents,
        ..Default::default()
    })
}

fn closed_or(row: &SurveyRow, what: &str) -> ApiError {
    let state = match row.state {
        State::Draft => "in draft",
        State::Open => "open",
        State::Closed => "closed",
        State::Unspecified => "in no state",
    };
    ApiError::FailedPrecondition(format!("{} is {state}; {what}", row.name()))
}

/// The responses of a survey, their free text opened with `key` (the
/// survey's, read in the same transaction). Text an older version wrote in
/// plaintext (a replica not yet upgraded, until the next start or sweep
/// seals it) is read as it is, so a close seals it rather than losing it.
async fn load_responses(
    conn: &mut sqlx::AnyConnection,
    survey_id: &str,
    key: Option<&TextKey>,
) -> Result<Vec<results::Response>, ApiError> {
    let rows =
        sqlx::query("SELECT id, segments FROM feedback_survey_responses WHERE survey_id = $1")
            .bind(survey_id)
            .fetch_all(&mut *conn)
            .await?;
    let mut out: BTreeMap<String, results::Response> = BTreeMap::new();
    for row in rows {
        let id: String = row.try_get("id")?;
        let segments: String = row.try_get("segments")?;
        let pairs: Vec<(String, String)> =
            serde_json::from_str(&segments).map_err(ApiError::internal)?;
        out.insert(
            id.clone(),
            results::Response {
                id,
                segments: pairs.into_iter().collect(),
                answers: BTreeMap::new(),
            },
        );
    }
    let rows = sqlx::query(
        "SELECT response_id, question, score, choices, sealed_text, text \
         FROM feedback_survey_answers WHERE survey_id = $1",
    )
    .bind(survey_id)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let id: String = row.try_get("response_id")?;
        let question: String = row.try_get("question")?;
        let score: Option<i64> = row.try_get("score")?;
        let choices: Option<String> = row.try_get("choices")?;
        let sealed: Option<String> = row.try_get("sealed_text")?;
        let plain: Option<String> = row.try_get("text")?;
        let value = match (score, choices, sealed, plain) {
            (Some(s), _, _, _) => Value::Score(s),
            (_, Some(c), _, _) => {
                Value::Choices(serde_json::from_str(&c).map_err(ApiError::internal)?)
            }
            (_, _, Some(sealed), _) => {
                let key = key.ok_or_else(key_gone)?;
                Value::Text(key.open(survey_id, &id, &question, &sealed)?)
            }
            (_, _, None, Some(plain)) => Value::Text(plain),
            _ => continue,
        };
        if let Some(r) = out.get_mut(&id) {
            r.answers.insert(question, value);
        }
    }
    Ok(out.into_values().collect())
}

/// Writes a closed survey's responses again, in random order: the order
/// rows were stored in (SQLite's rowids, PostgreSQL's heap) would otherwise
/// follow the order people answered in, which the invitations' times hint
/// at. (Old row versions are overwritten on SQLite, which runs with
/// `secure_delete`; on PostgreSQL they stay until vacuum.)
///
/// Free text is sealed again, with fresh nonces: its stored form, too, can
/// no longer be matched with what was stored before close.
async fn rewrite_shuffled(
    conn: &mut sqlx::AnyConnection,
    survey_id: &str,
    responses: &mut [results::Response],
    key: Option<&TextKey>,
) -> Result<(), ApiError> {
    for i in (1..responses.len()).rev() {
        let mut buf = [0u8; 8];
        getrandom::fill(&mut buf)
            .map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
        let j = (u64::from_le_bytes(buf) % (i as u64 + 1)) as usize;
        responses.swap(i, j);
    }
    sqlx::query("DELETE FROM feedback_survey_answers WHERE survey_id = $1")
        .bind(survey_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM feedback_survey_responses WHERE survey_id = $1")
        .bind(survey_id)
        .execute(&mut *conn)
        .await?;
    for r in responses.iter() {
        let segments: Vec<(&String, &String)> = r.segments.iter().collect();
        sqlx::query(
            "INSERT INTO feedback_survey_responses (id, survey_id, segments) VALUES ($1, $2, $3)",
        )
        .bind(&r.id)
        .bind(survey_id)
        .bind(serde_json::to_string(&segments).map_err(ApiError::internal)?)
        .execute(&mut *conn)
        .await?;
        for (question, value) in &r.answers {
            insert_answer(conn, &r.id, survey_id, question, value.clone(), key).await?;
        }
    }
    Ok(())
}

/// Stores one answer; free text only sealed, under `key`.
async fn insert_answer(
    conn: &mut sqlx::AnyConnection,
    response_id: &str,
    survey_id: &str,
    question: &str,
    value: Value,
    key: Option<&TextKey>,
) -> Result<(), ApiError> {
    let (score, choices, sealed) = match value {
        Value::Score(s) => (Some(s), None, None),
        Value::Choices(c) => (
            None,
            Some(serde_json::to_string(&c).map_err(ApiError::internal)?),
            None,
        ),
        Value::Text(t) => {
            let key = key.ok_or_else(key_gone)?;
            (
                None,
                None,
                Some(key.seal(survey_id, response_id, question, &t)),
            )
        }
    };
    sqlx::query(
        "INSERT INTO feedback_survey_answers \
         (response_id, survey_id, question, score, choices, sealed_text) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(response_id)
    .bind(survey_id)
    .bind(question)
    .bind(score)
    .bind(choices)
    .bind(sealed)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn load_served(
    conn: &mut sqlx::AnyConnection,
    survey_id: &str,
) -> Result<Vec<BTreeSet<String>>, ApiError> {
    let rows = sqlx::query("SELECT members FROM feedback_survey_served WHERE survey_id = $1")
        .bind(survey_id)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok(members_of(&r.try_get::<String, _>("members")?)))
        .collect()
}

async fn remember_served(
    conn: &mut sqlx::AnyConnection,
    survey_id: &str,
    sets: &[BTreeSet<String>],
) -> Result<(), ApiError> {
    for set in sets {
        let members = members_text(set);
        sqlx::query(
            "INSERT INTO feedback_survey_served (survey_id, members_hash, members) VALUES ($1, $2, $3) \
             ON CONFLICT (survey_id, members_hash) DO NOTHING",
        )
        .bind(survey_id)
        .bind(hex::encode(Sha256::digest(members.as_bytes())))
        .bind(members)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The results of `members` (the respondents asked for), broken down by
/// `segment_by` when set, and the respondent sets they serve.
fn compute(
    survey: &SurveyRow,
    members: &[&results::Response],
    segment_by: &str,
    texts: bool,
) -> (SurveyResults, Vec<BTreeSet<String>>) {
    let k = survey.k();
    let shuffler: results::Shuffle<'_> = &shuffle;
    let shuffle = texts.then_some(shuffler);
    let total = results::group(&survey.content, "", members, k, shuffle);
    let mut out = SurveyResults {
        survey: survey.name(),
        min_respondents: k as i32,
        total: Some(total),
        segments: Vec::new(),
        from_stored_aggregates: false,
    };
    if members.len() < k {
        // Nothing is served: nothing to guard.
        return (out, Vec::new());
    }
    let mut sets = vec![results::ids(members)];
    if !segment_by.is_empty() {
        for (value, group) in results::breakdown(members, segment_by, k) {
            sets.push(results::ids(&group));
            out.segments
                .push(results::group(&survey.content, &value, &group, k, shuffle));
        }
    }
    (out, sets)
}

impl Api {
    fn now(&self) -> i64 {
        self.store.now()
    }

    fn pool(&self) -> &sqlx::AnyPool {
        self.store.db().pool()
    }

    fn vault(&self) -> &Vault {
        &self.store.privacy().vault
    }

    /// The key sealing the free text of survey `id`, read in the caller's
    /// transaction after it has taken the survey's row (so a key made by a
    /// concurrent first answer is either committed and seen, or not yet
    /// made). With `make`, a survey without one gets one.
    async fn text_key(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        id: &str,
        make: bool,
    ) -> Result<Option<TextKey>, ApiError> {
        let subject: Option<String> =
            sqlx::query("SELECT text_key FROM feedback_surveys WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| r.try_get("text_key"))
                .transpose()?
                .flatten();
        let vault = self.vault().clone();
        let key = match subject {
            Some(subject) => Some(vault.key_of(tx, &subject).await?.ok_or_else(key_gone)?),
            None if make => {
                // A subject of the vault with no email: a key of its own.
                let (subject, key) = vault.subject_key(tx, None).await?;
                sqlx::query("UPDATE feedback_surveys SET text_key = $1 WHERE id = $2")
                    .bind(&subject)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                Some(key)
            }
            None => None,
        };
        Ok(key.map(|key| TextKey { vault, key }))
    }

    /// Destroys the key of survey `id`'s free text, inside the caller's
    /// transaction that deletes the text: every copy of it, backups
    /// included, is unreadable from then on.
    async fn destroy_text_key(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        id: &str,
    ) -> Result<(), ApiError> {
        let subject: Option<String> =
            sqlx::query("SELECT text_key FROM feedback_surveys WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| r.try_get("text_key"))
                .transpose()?
                .flatten();
        if let Some(subject) = subject {
            self.vault().destroy_key(tx, &subject).await?;
            sqlx::query("UPDATE feedback_surveys SET text_key = NULL WHERE id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn row(&self, id: &str) -> Result<Option<SurveyRow>, ApiError> {
        let row = sqlx::query(
            "SELECT id, state, body, create_time, update_time, open_time, close_time, responses_gone \
             FROM feedback_surveys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| read_row(&r)).transpose()
    }

    async fn load(&self, name: &str, field: &str) -> Result<SurveyRow, ApiError> {
        let id = survey_id(name, field)?;
        self.row(&id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("surveys/{id}")))
    }

    /// Moves a survey from one state to another, or says why not.
    async fn move_to(
        &self,
        name: &str,
        from: State,
        to: State,
        what: &str,
    ) -> Result<SurveyRow, Status> {
        let row = self.load(name, "name").await?;
        if row.state != from {
            return Err(closed_or(&row, what).into());
        }
        let now = self.now().max(row.update_time + 1);
        if to == State::Open && row.content.questions.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "{} has no questions; a survey opens with at least one",
                row.name()
            ))
            .into());
        }
        let mut tx = self.pool().begin().await.map_err(ApiError::from)?;
        let (sql, time) = match to {
            State::Open => (
                "UPDATE feedback_surveys SET state = $1, update_time = $2, open_time = $2 \
                 WHERE id = $3 AND state = $4",
                now,
            ),
            _ => (
                "UPDATE feedback_surveys SET state = $1, update_time = $2, close_time = $2 \
                 WHERE id = $3 AND state = $4",
                now,
            ),
        };
        let moved = sqlx::query(sql)
            .bind(to as i32 as i64)
            .bind(time)
            .bind(&row.id)
            .bind(from as i32 as i64)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?
            .rows_affected();
        if moved == 0 {
            return Err(
                ApiError::Aborted(format!("{} changed meanwhile; retry", row.name())).into(),
            );
        }
        if to == State::Closed {
            self.seal_results(&mut tx, &row).await?;
        }
        tx.commit().await.map_err(ApiError::from)?;
        Ok(self
            .row(&row.id)
            .await?
            .ok_or_else(|| ApiError::not_found(row.name()))?)
    }

    /// On close, inside its transaction: the links go, and the aggregates
    /// kept after the responses are made: the total and every breakdown
    /// whose groups pass the guard against what was served and each other.
    async fn seal_results(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        row: &SurveyRow,
    ) -> Result<(), ApiError> {
        sqlx::query("DELETE FROM feedback_survey_links WHERE survey_id = $1")
            .bind(&row.id)
            .execute(&mut **tx)
            .await?;
        let mut responses = {
            let key = self.text_key(tx, &row.id, false).await?;
            load_responses(tx, &row.id, key.as_ref()).await?
        };
        // Text an older version left in plaintext is sealed here too.
        let texts = responses
            .iter()
            .any(|r| r.answers.values().any(|v| matches!(v, Value::Text(_))));
        let key = self.text_key(tx, &row.id, texts).await?;
        rewrite_shuffled(tx, &row.id, &mut responses, key.as_ref()).await?;
        let members: Vec<&results::Response> = responses.iter().collect();
        let all = results::ids(&members);
        let mut earlier = load_served(tx, &row.id).await?;
        let k = row.k();
        let mut stored: Vec<(String, SurveyResults)> = Vec::new();
        let mut new_sets = Vec::new();
        let (total, sets) = compute(row, &members, "", false);
        if results::may_serve(&sets, &all, &earlier, k) {
            stored.push((String::new(), total));
            earlier.extend(sets.iter().cloned());
            new_sets.extend(sets);
        }
        if all.len() >= k {
            let keys: BTreeSet<&String> =
                responses.iter().flat_map(|r| r.segments.keys()).collect();
            for key in keys {
                let (result, sets) = compute(row, &members, key, false);
                if results::may_serve(&sets, &all, &earlier, k) {
                    stored.push((key.clone(), result));
                    earlier.extend(sets.iter().cloned());
                    new_sets.extend(sets);
                }
            }
        }
        for (segment_by, result) in stored {
            sqlx::query(
                "INSERT INTO feedback_survey_aggregates (survey_id, segment_by, body) VALUES ($1, $2, $3)",
            )
            .bind(&row.id)
            .bind(segment_by)
            .bind(hex::encode(result.encode_to_vec()))
            .execute(&mut **tx)
            .await?;
        }
        remember_served(tx, &row.id, &new_sets).await?;
        Ok(())
    }

    /// Free text written in plaintext (the `text` column of migration 0002)
    /// sealed under its survey's key and cleared, a batch of answers at a
    /// time, each survey's in one transaction: at start-up, and at each
    /// sweep for what replicas not yet upgraded wrote meanwhile. Replicas
    /// doing it together each seal what the other has not (the update
    /// names the plaintext it replaces).
    ///
    /// What the old rows leave behind is removed as well: on SQLite
    /// (`secure_delete` on) the log is checkpointed and emptied, so the old
    /// pages are overwritten; on PostgreSQL the table is rewritten
    /// (`VACUUM FULL`, once), so no dead row version keeps the text.
    async fn seal_plaintext(&self) -> Result<u64, ApiError> {
        const BATCH: i64 = 500;
        let mut sealed = 0u64;
        loop {
            let rows = sqlx::query(
                "SELECT response_id, survey_id, question, text FROM feedback_survey_answers \
                 WHERE text IS NOT NULL ORDER BY survey_id LIMIT $1",
            )
            .bind(BATCH)
            .fetch_all(self.pool())
            .await?;
            if rows.is_empty() {
                break;
            }
            let mut by_survey: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
            for row in rows {
                by_survey
                    .entry(row.try_get("survey_id")?)
                    .or_default()
                    .push((
                        row.try_get("response_id")?,
                        row.try_get("question")?,
                        row.try_get("text")?,
                    ));
            }
            for (survey, answers) in by_survey {
                let mut tx = self.pool().begin().await?;
                let there = sqlx::query("UPDATE feedback_surveys SET state = state WHERE id = $1")
                    .bind(&survey)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if there == 0 {
                    // The answers of a survey already deleted: nothing
                    // reads them; they go.
                    sqlx::query(
                        "DELETE FROM feedback_survey_answers WHERE survey_id = $1 AND text IS NOT NULL",
                    )
                    .bind(&survey)
                    .execute(&mut *tx)
                    .await?;
                } else {
                    let key = self
                        .text_key(&mut tx, &survey, true)
                        .await?
                        .ok_or_else(key_gone)?;
                    for (response, question, text) in answers {
                        sealed += sqlx::query(
                            "UPDATE feedback_survey_answers SET sealed_text = $1, text = NULL \
                             WHERE response_id = $2 AND question = $3 AND text = $4",
                        )
                        .bind(key.seal(&survey, &response, &question, &text))
                        .bind(&response)
                        .bind(&question)
                        .bind(&text)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    }
                }
                tx.commit().await?;
            }
        }
        if sealed > 0 {
            self.scrub_old_rows().await?;
            tracing::info!(
                sealed,
                "survey free text an older version stored in plaintext is now sealed"
            );
        }
        Ok(sealed)
    }

    /// Removes the old row versions the sealing left behind (see
    /// [`Self::seal_plaintext`]).
    async fn scrub_old_rows(&self) -> Result<(), ApiError> {
        match self.store.db().backend() {
            custodian_runtime::Backend::Sqlite => {
                let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(self.pool())
                    .await?;
                let busy: i64 = row.try_get(0)?;
                if busy != 0 {
                    // A reader held the log: the checkpointer copies it
                    // over later, and the log is started over in time.
                    tracing::warn!(
                        "the SQLite log could not be emptied after sealing survey text; \
                         old pages are overwritten by later checkpoints"
                    );
                }
            }
            custodian_runtime::Backend::Postgres => {
                sqlx::raw_sql("VACUUM FULL feedback_survey_answers")
                    .execute(self.pool())
                    .await?;
            }
        }
        Ok(())
    }

    async fn sweep(&self, now: i64, by: Option<&Call>) -> Result<SweepCounts, ApiError> {
        let Some(keep) = default_retention(DataCategory::Feedback) else {
            return Ok(Vec::new());
        };
        let cutoff = now - micros(keep);
        self.seal_plaintext().await?;
        let due = sqlx::query(
            "SELECT id FROM feedback_surveys WHERE state = $1 AND close_time < $2 AND responses_gone = 0",
        )
        .bind(State::Closed as i32 as i64)
        .bind(cutoff)
        .fetch_all(self.pool())
        .await?;
        let mut deleted = 0i64;
        for row in due {
            let id: String = row.try_get("id")?;
            let mut tx = self.pool().begin().await?;
            sqlx::query("UPDATE feedback_surveys SET responses_gone = 1 WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM feedback_survey_answers WHERE survey_id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            // The text is gone here; its key goes with it, so no copy of
            // it (a backup) opens any more.
            self.destroy_text_key(&mut tx, &id).await?;
            deleted += sqlx::query("DELETE FROM feedback_survey_responses WHERE survey_id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
            // The served sets name responses that no longer exist; the
            // stored aggregates were checked against them at close.
            sqlx::query("DELETE FROM feedback_survey_served WHERE survey_id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        // Links of invitations the kit's retention or an erasure removed.
        sqlx::query(
            "DELETE FROM feedback_survey_links WHERE invitation_id NOT IN \
             (SELECT id FROM feedback_survey_invitations)",
        )
        .execute(self.pool())
        .await?;
        if deleted == 0 {
            return Ok(Vec::new());
        }
        self.store
            .privacy()
            .audit
            .record(Event {
                time: now,
                caller: by
                    .map(|c| c.actor().to_owned())
                    .unwrap_or_else(|| "custodian:retention".to_owned()),
                purpose: "retention".to_owned(),
                method: "schedule".to_owned(),
                resource: format!("{}/surveyResponses", crate::NAME),
                detail: format!("{deleted} survey responses"),
                ..Event::new(AuditAction::Sweep, AuditOutcome::Ok)
            })
            .await?;
        Ok(vec![(DataCategory::Feedback, deleted)])
    }

    /// The invitations of a data subject.
    async fn invitations_of(
        &self,
        call: &Call,
        subject: &Option<SubjectIdentifier>,
    ) -> Result<Vec<(String, String, String)>, Status> {
        let filter = match subject.as_ref().and_then(|s| s.kind.as_ref()) {
            Some(subject_identifier::Kind::Email(email)) => match normalize::email(email) {
                Ok(email) => Filter::Lookup(Lookup::Email, email),
                Err(_) => return Ok(Vec::new()),
            },
            Some(subject_identifier::Kind::Id(name)) => {
                if let Ok(vars) = self.invitations.parse(name, "subject.id") {
                    Filter::Eq("id", Arg::Text(vars.id().to_owned()))
                } else if custodian_kit::pattern::Pattern::parse("tenants/{tenant}/users/{user}")
                    .is_ok_and(|p| p.parse_name(name).is_some())
                {
                    Filter::Lookup(Lookup::User, name.clone())
                } else {
                    return Ok(Vec::new());
                }
            }
            _ => return Ok(Vec::new()),
        };
        let query = Query {
            filters: vec![filter],
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = Page::parse(1000, &token, "survey-subject")?;
            let (found, next) = self.invitations.query(call, &query, &page).await?;
            out.extend(
                found
                    .into_iter()
                    .map(|s| (s.name(), s.id.clone(), s.subject_id.clone())),
            );
            if next.is_empty() {
                return Ok(out);
            }
            token = next;
        }
    }

    /// Erasure's part here: the link of each invitation of the subject and
    /// the free text of the response it leads to. The kit then erases the
    /// invitations themselves. After close there is no link: nothing found.
    async fn erase(
        &self,
        call: &Call,
        subject: Option<SubjectIdentifier>,
    ) -> Result<Vec<SubjectRecord>, Status> {
        let mut erased = Vec::new();
        for (name, id, subject_ref) in self.invitations_of(call, &subject).await? {
            let link = sqlx::query(
                "SELECT response_id FROM feedback_survey_links WHERE invitation_id = $1",
            )
            .bind(&id)
            .fetch_optional(self.pool())
            .await
            .map_err(ApiError::from)?;
            let Some(link) = link else { continue };
            let response: Option<String> = link.try_get("response_id").map_err(ApiError::from)?;
            let mut tx = self.pool().begin().await.map_err(ApiError::from)?;
            let mut texts = 0;
            if let Some(response) = &response {
                texts = sqlx::query(
                    "DELETE FROM feedback_survey_answers WHERE response_id = $1 \
                     AND (sealed_text IS NOT NULL OR text IS NOT NULL)",
                )
                .bind(response)
                .execute(&mut *tx)
                .await
                .map_err(ApiError::from)?
                .rows_affected();
            }
            sqlx::query("DELETE FROM feedback_survey_links WHERE invitation_id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(ApiError::from)?;
            let resource = format!("{name}/link");
            let privacy = self.store.privacy();
            let mut event = call.event(privacy, &resource, &subject_ref, &[], AuditOutcome::Ok);
            event.detail = call.detail(&format!("link removed, {texts} free-text answers deleted"));
            privacy.audit.commit(tx, &[event]).await?;
            erased.push(SubjectRecord {
                resource,
                service: grpc_service().to_owned(),
                data_category: DataCategory::Feedback as i32,
                controller: Some(Controller {
                    kind: Some(controller::Kind::Company(true)),
                }),
            });
        }
        Ok(erased)
    }

    /// Checks the answers of a submission (already through the kit's
    /// checks) against the survey's questions.
    fn answers(
        survey: &Survey,
        request: &SubmitResponseRequest,
    ) -> Result<Vec<(String, Value)>, ApiError> {
        let mut v = Violations::new();
        let questions: BTreeMap<&str, _> = survey
            .questions
            .iter()
            .map(|q| (q.id.as_str(), q))
            .collect();
        let mut out: Vec<(String, Value)> = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, answer) in request.answers.iter().enumerate() {
            let at = format!("answers[{i}]");
            let Some(q) = questions.get(answer.question.as_str()) else {
                v.add(format!("{at}.question"), "is not a question of this survey");
                continue;
            };
            if !seen.insert(answer.question.clone()) {
                v.add(format!("{at}.question"), "is answered twice");
                continue;
            }
            let kind = Kind::try_from(q.kind).unwrap_or(Kind::Unspecified);
            use survey_answer::Value as A;
            let value = match (kind, &answer.value) {
                (Kind::Rating, Some(A::Score(s))) if (1..=5).contains(s) => {
                    Value::Score(i64::from(*s))
                }
                (Kind::Nps, Some(A::Score(s))) if (0..=10).contains(s) => {
                    Value::Score(i64::from(*s))
                }
                (Kind::Rating | Kind::Nps, Some(A::Score(_))) => {
                    v.add(
                        format!("{at}.score"),
                        "is out of range (1 to 5 for a rating, 0 to 10 for NPS)",
                    );
                    continue;
                }
                (Kind::SingleChoice, Some(A::Choice(c)))
                    if q.options.contains(&c.trim().to_owned()) =>
                {
                    Value::Choices(vec![c.trim().to_owned()])
                }
                (Kind::SingleChoice, Some(A::Choice(_))) => {
                    v.add(format!("{at}.choice"), "is not an option of the question");
                    continue;
                }
                (Kind::MultipleChoice, Some(A::Choices(c))) => {
                    let chosen: Vec<String> =
                        c.options.iter().map(|o| o.trim().to_owned()).collect();
                    let distinct: BTreeSet<&String> = chosen.iter().collect();
                    if chosen.is_empty()
                        || distinct.len() != chosen.len()
                        || chosen.iter().any(|o| !q.options.contains(o))
                    {
                        v.add(
                            format!("{at}.choices"),
                            "must be distinct options of the question, at least one",
                        );
                        continue;
                    }
                    Value::Choices(chosen)
                }
                (Kind::FreeText, Some(A::Text(t))) => {
                    // Normalised and guarded with every other value.
                    if t.is_empty() {
                        continue;
                    }
                    Value::Text(t.clone())
                }
                (_, None) => {
                    v.add(format!("{at}.value"), "is required");
                    continue;
                }
                _ => {
                    v.add(
                        format!("{at}.value"),
                        "is not the kind of answer the question takes",
                    );
                    continue;
                }
            };
            out.push((answer.question.clone(), value));
        }
        for q in &survey.questions {
            if q.kind != Kind::FreeText as i32 && !seen.contains(&q.id) {
                v.add("answers", format!("question {} is not answered", q.id));
            }
        }
        v.finish()?;
        Ok(out)
    }
}

fn read_row(r: &sqlx::any::AnyRow) -> Result<SurveyRow, ApiError> {
    let state: i64 = r.try_get("state")?;
    Ok(SurveyRow {
        id: r.try_get("id")?,
        state: State::try_from(state as i32).unwrap_or(State::Unspecified),
        content: decode(&r.try_get::<String, _>("body")?)?,
        create_time: r.try_get("create_time")?,
        update_time: r.try_get("update_time")?,
        open_time: r.try_get("open_time")?,
        close_time: r.try_get("close_time")?,
        responses_gone: r.try_get::<i64, _>("responses_gone")? != 0,
    })
}

#[tonic::async_trait]
impl SurveyService for Api {
    async fn create_survey(
        &self,
        request: Request<CreateSurveyRequest>,
    ) -> Result<Response<Survey>, Status> {
        let _call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idempotency = Idempotency::of("CreateSurvey", "", &request_id, &req)?;
        if let Some(idem) = &idempotency
            && let Some(resource) = self.store.replayed(idem).await?
        {
            return Ok(Response::new(
                self.load(&resource, "request_id").await?.to_proto(),
            ));
        }
        let mut v = Violations::new();
        let content = prepare_survey(req.survey.unwrap_or_default(), &mut v)?;
        v.finish()?;
        let id = uuid::Uuid::now_v7().to_string();
        let name = format!("surveys/{id}");
        let now = self.now();
        let mut tx = self.pool().begin().await.map_err(ApiError::from)?;
        sqlx::query(
            "INSERT INTO feedback_surveys (id, state, body, create_time, update_time, responses_gone) \
             VALUES ($1, $2, $3, $4, $4, 0)",
        )
        .bind(&id)
        .bind(State::Draft as i32 as i64)
        .bind(encode(&content))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        if let Some(idem) = &idempotency
            && !self.store.remember(&mut tx, idem, &name).await?
        {
            drop(tx);
            let resource = self
                .store
                .replayed(idem)
                .await?
                .ok_or_else(|| ApiError::Aborted("retry".to_owned()))?;
            return Ok(Response::new(
                self.load(&resource, "request_id").await?.to_proto(),
            ));
        }
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(self.load(&name, "name").await?.to_proto()))
    }

    async fn get_survey(
        &self,
        request: Request<GetSurveyRequest>,
    ) -> Result<Response<Survey>, Status> {
        let _call = Call::of(&request)?;
        Ok(Response::new(
            self.load(&request.get_ref().name, "name").await?.to_proto(),
        ))
    }

    async fn list_surveys(
        &self,
        request: Request<ListSurveysRequest>,
    ) -> Result<Response<ListSurveysResponse>, Status> {
        let _call = Call::of(&request)?;
        let req = request.into_inner();
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!("surveys|{}", req.state),
        )?;
        let rows = sqlx::query(
            "SELECT id, state, body, create_time, update_time, open_time, close_time, responses_gone \
             FROM feedback_surveys WHERE id > $1 AND ($2 = 0 OR state = $2) ORDER BY id LIMIT $3",
        )
        .bind(page.after.clone().unwrap_or_default())
        .bind(i64::from(req.state))
        .bind(page.fetch_limit())
        .fetch_all(self.pool())
        .await
        .map_err(ApiError::from)?;
        let rows = rows.iter().map(read_row).collect::<Result<Vec<_>, _>>()?;
        let (rows, next_page_token) = page.finish(rows, |r| r.id.as_str());
        Ok(Response::new(ListSurveysResponse {
            surveys: rows.iter().map(SurveyRow::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_survey(
        &self,
        request: Request<UpdateSurveyRequest>,
    ) -> Result<Response<Survey>, Status> {
        let _call = Call::of(&request)?;
        let req = request.into_inner();
        let patch = req.survey.unwrap_or_default();
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::new();
        if paths.is_empty() {
            v.add("update_mask", "must name at least one field");
        }
        const UPDATABLE: [&str; 4] = ["title", "description", "questions", "min_respondents"];
        for (i, path) in paths.iter().enumerate() {
            if !UPDATABLE.contains(&path.as_str()) {
                v.add(
                    "update_mask",
                    format!(
                        "paths[{i}] is not an updatable field; updatable: {}",
                        UPDATABLE.join(", ")
                    ),
                );
            }
        }
        v.finish()?;
        let row = self.load(&patch.name, "survey.name").await?;
        let fixed = paths
            .iter()
            .any(|p| p == "questions" || p == "min_respondents");
        if fixed && row.state != State::Draft {
            return Err(closed_or(
                &row,
                "its questions and min_respondents change only in draft",
            )
            .into());
        }
        let mut after = row.content.clone();
        for path in &paths {
            match path.as_str() {
                "title" => after.title = patch.title.clone(),
                "description" => after.description = patch.description.clone(),
                "questions" => after.questions = patch.questions.clone(),
                _ => after.min_respondents = patch.min_respondents,
            }
        }
        let mut v = Violations::new();
        let after = prepare_survey(after, &mut v)?;
        v.finish()?;
        let now = self.now().max(row.update_time + 1);
        let done = sqlx::query(
            "UPDATE feedback_surveys SET body = $1, update_time = $2 \
             WHERE id = $3 AND update_time = $4 AND state = $5",
        )
        .bind(encode(&after))
        .bind(now)
        .bind(&row.id)
        .bind(row.update_time)
        .bind(row.state as i32 as i64)
        .execute(self.pool())
        .await
        .map_err(ApiError::from)?
        .rows_affected();
        if done == 0 {
            return Err(
                ApiError::Aborted(format!("{} changed meanwhile; retry", row.name())).into(),
            );
        }
        Ok(Response::new(
            self.load(&row.name(), "name").await?.to_proto(),
        ))
    }

    async fn delete_survey(
        &self,
        request: Request<DeleteSurveyRequest>,
    ) -> Result<Response<()>, Status> {
        let call = Call::of(&request)?;
        let row = self.load(&request.get_ref().name, "name").await?;
        // The invitations through the kit: their keys destroyed, each audited.
        let query = Query {
            parent_id: Some(row.id.clone()),
            ..Default::default()
        };
        loop {
            let page = Page::parse(500, "", "survey-delete")?;
            let (found, _) = self.invitations.query(&call, &query, &page).await?;
            if found.is_empty() {
                break;
            }
            for invitation in found {
                self.invitations
                    .delete(&call, &invitation.name(), "name")
                    .await?;
            }
        }
        let mut tx = self.pool().begin().await.map_err(ApiError::from)?;
        // The survey's row first (a write), then its text key with its text.
        sqlx::query("UPDATE feedback_surveys SET state = state WHERE id = $1")
            .bind(&row.id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        self.destroy_text_key(&mut tx, &row.id).await?;
        for table in [
            "feedback_survey_links",
            "feedback_survey_answers",
            "feedback_survey_responses",
            "feedback_survey_served",
            "feedback_survey_aggregates",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE survey_id = $1"
            )))
            .bind(&row.id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        }
        sqlx::query("DELETE FROM feedback_surveys WHERE id = $1")
            .bind(&row.id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(()))
    }

    async fn open_survey(
        &self,
        request: Request<OpenSurveyRequest>,
    ) -> Result<Response<Survey>, Status> {
        let _call = Call::of(&request)?;
        let row = self
            .move_to(
                &request.get_ref().name,
                State::Draft,
                State::Open,
                "only a draft opens",
            )
            .await?;
        Ok(Response::new(row.to_proto()))
    }

    async fn close_survey(
        &self,
        request: Request<CloseSurveyRequest>,
    ) -> Result<Response<Survey>, Status> {
        let _call = Call::of(&request)?;
        let row = self
            .move_to(
                &request.get_ref().name,
                State::Open,
                State::Closed,
                "only an open survey closes",
            )
            .await?;
        Ok(Response::new(row.to_proto()))
    }

    async fn create_invitation(
        &self,
        request: Request<CreateInvitationRequest>,
    ) -> Result<Response<CreateInvitationResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let mut invitation = req.invitation.unwrap_or_default();
        let mut v = Violations::new();
        self.invitations
            .prepare(&mut invitation, "invitation", Sensitive::Refuse, &mut v)?;
        if invitation.email.is_empty() && invitation.user.is_empty() {
            v.add("invitation.email", "an email or a user is required");
        }
        let mut segments: Vec<(String, String)> = Vec::new();
        for (i, segment) in req.segments.iter().enumerate() {
            let mut dynamic = segment.transcode_to_dynamic();
            let at = format!("segments[{i}]");
            fields::prepare(&DECLARATIONS, &mut dynamic, &at, Sensitive::Refuse, &mut v);
            let key = dynamic
                .get_field_by_name("key")
                .and_then(|k| k.as_str().map(str::to_owned))
                .unwrap_or_default();
            let value = dynamic
                .get_field_by_name("value")
                .and_then(|k| k.as_str().map(str::to_owned))
                .unwrap_or_default();
            if key.is_empty() || value.is_empty() {
                v.add(&at, "a key and a value are required");
            } else if segments.iter().any(|(k, _)| *k == key) {
                v.add(format!("{at}.key"), "is given twice");
            } else {
                segments.push((key, value));
            }
        }
        v.finish()?;
        let survey = self.load(&req.parent, "parent").await?;
        if survey.state == State::Closed {
            return Err(closed_or(&survey, "nobody more is invited").into());
        }
        let token = random_hex(32)?;
        let stored = self
            .invitations
            .create(
                &call,
                New {
                    tenant_id: String::new(),
                    parent_id: survey.id.clone(),
                    message: invitation,
                    idempotency: None,
                },
            )
            .await?;
        let linked = async {
            let mut tx = self.pool().begin().await?;
            // The survey row first: a close in between either came before
            // (no link is made) or waits for this one.
            let open = sqlx::query(
                "UPDATE feedback_surveys SET state = state WHERE id = $1 AND state <> $2",
            )
            .bind(&survey.id)
            .bind(State::Closed as i32 as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if open == 0 {
                return Err(closed_or(&survey, "nobody more is invited"));
            }
            sqlx::query(
                "INSERT INTO feedback_survey_links (invitation_id, survey_id, token_hash, segments) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&stored.id)
            .bind(&survey.id)
            .bind(token_hash(&token))
            .bind(serde_json::to_string(&segments).map_err(ApiError::internal)?)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(err) = linked {
            // No invitation without its token.
            let _ = self.invitations.delete(&call, &stored.name(), "name").await;
            return Err(err.into());
        }
        let shown = self.invitations.shown(&call, &stored)?;
        Ok(respond(
            CreateInvitationResponse {
                invitation: Some(shown.message),
                token,
            },
            &shown.withheld,
        ))
    }

    async fn submit_response(
        &self,
        request: Request<SubmitResponseRequest>,
    ) -> Result<Response<SubmitResponseResponse>, Status> {
        let _call = Call::of(&request)?;
        let mut req = request.into_inner();
        if req.token.is_empty() {
            return Err(ApiError::invalid("token", "is required").into());
        }
        // Every value through the kit's checks, the sensitive-data guard
        // among them: free text holding a card number or an account is
        // refused, as any other field's value is, and nothing is stored.
        let mut v = Violations::new();
        for (i, answer) in req.answers.iter_mut().enumerate() {
            let mut dynamic = answer.transcode_to_dynamic();
            let at = format!("answers[{i}]");
            fields::prepare(&DECLARATIONS, &mut dynamic, &at, Sensitive::Refuse, &mut v);
            *answer = dynamic.transcode_to().map_err(ApiError::internal)?;
        }
        v.finish()?;
        let link = sqlx::query(
            "SELECT invitation_id, survey_id, segments, response_id FROM feedback_survey_links \
             WHERE token_hash = $1",
        )
        .bind(token_hash(&req.token))
        .fetch_optional(self.pool())
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| {
            // Links go when a survey closes: a token of a closed survey
            // is as unknown as a made-up one, and is told apart from it by
            // nothing.
            ApiError::FailedPrecondition(
                "no open invitation has this token (its survey may have closed)".to_owned(),
            )
        })?;
        let invitation: String = link.try_get("invitation_id").map_err(ApiError::from)?;
        let survey_id: String = link.try_get("survey_id").map_err(ApiError::from)?;
        let segments: String = link.try_get("segments").map_err(ApiError::from)?;
        let answered: Option<String> = link.try_get("response_id").map_err(ApiError::from)?;
        if answered.is_some() {
            return Err(ApiError::AlreadyExists(
                "this invitation has already been answered".to_owned(),
            )
            .into());
        }
        let survey = self
            .row(&survey_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("surveys/{survey_id}")))?;
        if survey.state != State::Open {
            return Err(closed_or(&survey, "it takes no responses").into());
        }
        let answers = Self::answers(&survey.content, &req)?;
        let response_id = random_hex(16)?;
        let mut tx = self.pool().begin().await.map_err(ApiError::from)?;
        // Serialises with a close of the survey (which takes the same row).
        let open =
            sqlx::query("UPDATE feedback_surveys SET state = state WHERE id = $1 AND state = $2")
                .bind(&survey.id)
                .bind(State::Open as i32 as i64)
                .execute(&mut *tx)
                .await
                .map_err(ApiError::from)?
                .rows_affected();
        if open == 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "{} is no longer open; it takes no responses",
                survey.name()
            ))
            .into());
        }
        let linked = sqlx::query(
            "UPDATE feedback_survey_links SET response_id = $1, segments = '' \
             WHERE invitation_id = $2 AND response_id IS NULL",
        )
        .bind(&response_id)
        .bind(&invitation)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?
        .rows_affected();
        if linked == 0 {
            return Err(ApiError::AlreadyExists(
                "this invitation has already been answered".to_owned(),
            )
            .into());
        }
        sqlx::query(
            "INSERT INTO feedback_survey_responses (id, survey_id, segments) VALUES ($1, $2, $3)",
        )
        .bind(&response_id)
        .bind(&survey.id)
        .bind(&segments)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let key = if answers.iter().any(|(_, v)| matches!(v, Value::Text(_))) {
            self.text_key(&mut tx, &survey.id, true).await?
        } else {
            None
        };
        for (question, value) in answers {
            insert_answer(
                &mut tx,
                &response_id,
                &survey.id,
                &question,
                value,
                key.as_ref(),
            )
            .await?;
        }
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(SubmitResponseResponse {
            survey: survey.name(),
        }))
    }

    async fn get_survey_results(
        &self,
        request: Request<GetSurveyResultsRequest>,
    ) -> Result<Response<SurveyResults>, Status> {
        let _call = Call::of(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let mut filters: Vec<(String, BTreeSet<String>)> = Vec::new();
        for (i, f) in req.filters.iter().enumerate() {
            let values: BTreeSet<String> = f
                .values
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            if f.key.is_empty() || values.is_empty() {
                v.add(
                    format!("filters[{i}]"),
                    "a key and at least one value are required",
                );
            } else if filters.iter().any(|(k, _)| *k == f.key) {
                v.add(format!("filters[{i}].key"), "is given twice");
            } else {
                filters.push((f.key.clone(), values));
            }
        }
        v.finish()?;
        let survey = self.load(&req.survey, "survey").await?;
        if survey.responses_gone {
            if !filters.is_empty() {
                return Err(ApiError::FailedPrecondition(format!(
                    "the responses of {} have expired; only the aggregates made at close remain, without filters",
                    survey.name()
                ))
                .into());
            }
            let row = sqlx::query(
                "SELECT body FROM feedback_survey_aggregates WHERE survey_id = $1 AND segment_by = $2",
            )
            .bind(&survey.id)
            .bind(&req.segment_by)
            .fetch_optional(self.pool())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| {
                ApiError::FailedPrecondition(format!(
                    "the responses of {} have expired, and no aggregate by this segment was kept",
                    survey.name()
                ))
            })?;
            let body: String = row.try_get("body").map_err(ApiError::from)?;
            let bytes = hex::decode(body).map_err(ApiError::internal)?;
            let mut results =
                SurveyResults::decode(bytes.as_slice()).map_err(ApiError::internal)?;
            results.from_stored_aggregates = true;
            return Ok(Response::new(results));
        }
        let mut tx = self.pool().begin().await.map_err(ApiError::from)?;
        // One query of a survey's results at a time: each is checked
        // against every set served before it.
        sqlx::query("UPDATE feedback_surveys SET responses_gone = responses_gone WHERE id = $1")
            .bind(&survey.id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        let key = self.text_key(&mut tx, &survey.id, false).await?;
        let responses = load_responses(&mut tx, &survey.id, key.as_ref()).await?;
        let everyone: Vec<&results::Response> = responses.iter().collect();
        let all = results::ids(&everyone);
        let members: Vec<&results::Response> = responses
            .iter()
            .filter(|r| {
                filters.iter().all(|(key, values)| {
                    values.contains(r.segments.get(key).map_or(results::NONE, String::as_str))
                })
            })
            .collect();
        let (result, sets) = compute(&survey, &members, &req.segment_by, true);
        if !sets.is_empty() {
            let earlier = load_served(&mut tx, &survey.id).await?;
            if !results::may_serve(&sets, &all, &earlier, survey.k()) {
                return Err(ApiError::FailedPrecondition(format!(
                    "these results could be compared with the survey's total or with results \
                     given before to single out fewer than {} respondents; ask for a larger \
                     group or the same one",
                    survey.k()
                ))
                .into());
            }
            remember_served(&mut tx, &survey.id, &sets).await?;
        }
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(result))
    }
}

/// The surveys' part in data-subject rights. Locating, exporting and
/// correcting are the kit's (the invitations); no response is ever
/// exported, since no method returns one respondent's answers. Erasure
/// removes the link and the person's free text first.
struct SurveySubject {
    api: Api,
}

impl SubjectData for SurveySubject {
    fn locate<'a>(
        &'a self,
        _call: &'a Call,
        _subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn export<'a>(
        &'a self,
        _call: &'a Call,
        _subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<ExportSubjectDataResponse>, Status>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn rectify<'a>(
        &'a self,
        _call: &'a Call,
        _subject: Option<SubjectIdentifier>,
        _corrections: Vec<FieldCorrection>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn erase<'a>(
        &'a self,
        call: &'a Call,
        subject: Option<SubjectIdentifier>,
    ) -> BoxFuture<'a, Result<Vec<SubjectRecord>, Status>> {
        Box::pin(self.api.erase(call, subject))
    }
}
