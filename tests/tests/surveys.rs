//! Surveys through the generated clients, on SQLite and PostgreSQL: results
//! only in aggregate (k-suppression, the differencing guard), responses
//! kept apart from who gave them (the link gone at close), bad input
//! refused with nothing stored (free text with sensitive data among it),
//! free text sealed at rest (never in plaintext in the database's files,
//! its key destroyed with it; plaintext an older version left sealed at
//! start-up), the 30-day sweep with the aggregates kept, erasure of a
//! respondent, and, over the whole descriptor set, no method that returns
//! one respondent's answers.

use std::{collections::BTreeSet, time::Duration};

use custodian_proto::{
    DESCRIPTOR_POOL,
    common::v1::{DataCategory, SubjectIdentifier, subject_identifier},
    feedback::v1::{
        CloseSurveyRequest, CreateInvitationRequest, CreateSurveyRequest, DeleteSurveyRequest,
        GetSurveyRequest, GetSurveyResultsRequest, ListSurveysRequest, OpenSurveyRequest,
        ResultGroup, SegmentFilter, SegmentValue, SubmitResponseRequest, Survey, SurveyAnswer,
        SurveyChoices, SurveyInvitation, SurveyQuestion, SurveyResults, UpdateSurveyRequest,
        survey::State, survey_answer::Value, survey_question::Kind,
    },
    prost_reflect::{Kind as FieldKind, MessageDescriptor},
    retention::v1::SweepExpiredRequest,
    subject::v1::{EraseSubjectDataRequest, LocateSubjectDataRequest},
};
use custodian_tests::{Bearer, TestApp, storage_test, violations};
use prost_types::FieldMask;
use sqlx::{Column as _, Row as _};
use tonic::{Code, Status};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// A Visa test number (Luhn-valid).
const CARD: &str = "4111 1111 1111 1111";

// --- builders ------------------------------------------------------------

fn question(id: &str, kind: Kind, options: &[&str]) -> SurveyQuestion {
    SurveyQuestion {
        id: id.into(),
        text: format!("Question {id}?"),
        kind: kind as i32,
        options: options.iter().map(|o| (*o).to_owned()).collect(),
    }
}

fn questions() -> Vec<SurveyQuestion> {
    vec![
        question("ease", Kind::Rating, &[]),
        question("fit", Kind::SingleChoice, &["yes", "no"]),
        question(
            "features",
            Kind::MultipleChoice,
            &["reports", "alerts", "api"],
        ),
        question("recommend", Kind::Nps, &[]),
        question("comment", Kind::FreeText, &[]),
    ]
}

async fn create(app: &TestApp) -> Survey {
    app.surveys()
        .create_survey(CreateSurveyRequest {
            survey: Some(Survey {
                title: "Onboarding 2027".into(),
                questions: questions(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create survey")
        .into_inner()
}

async fn open(app: &TestApp, name: &str) {
    app.surveys()
        .open_survey(OpenSurveyRequest { name: name.into() })
        .await
        .expect("open survey");
}

async fn close(app: &TestApp, name: &str) {
    app.surveys()
        .close_survey(CloseSurveyRequest { name: name.into() })
        .await
        .expect("close survey");
}

/// An open survey.
async fn open_survey(app: &TestApp) -> String {
    let survey = create(app).await;
    open(app, &survey.name).await;
    survey.name
}

/// Invites `email` with segment values; returns the token.
async fn invite(app: &TestApp, survey: &str, email: &str, segments: &[(&str, &str)]) -> String {
    let response = app
        .surveys()
        .create_invitation(CreateInvitationRequest {
            parent: survey.into(),
            invitation: Some(SurveyInvitation {
                email: email.into(),
                ..Default::default()
            }),
            segments: segments
                .iter()
                .map(|(k, v)| SegmentValue {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
        })
        .await
        .expect("invite")
        .into_inner();
    assert!(response.invitation.unwrap().name.starts_with(survey));
    assert_eq!(response.token.len(), 64);
    response.token
}

fn answer(question: &str, value: Value) -> SurveyAnswer {
    SurveyAnswer {
        question: question.into(),
        value: Some(value),
    }
}

/// A full set of answers, scored `score` (1 to 5).
fn answers(score: i32, comment: &str) -> Vec<SurveyAnswer> {
    let mut out = vec![
        answer("ease", Value::Score(score)),
        answer(
            "fit",
            Value::Choice(if score > 2 { "yes" } else { "no" }.into()),
        ),
        answer(
            "features",
            Value::Choices(SurveyChoices {
                options: vec!["reports".into(), "api".into()],
            }),
        ),
        answer("recommend", Value::Score(score * 2)),
    ];
    if !comment.is_empty() {
        out.push(answer("comment", Value::Text(comment.into())));
    }
    out
}

async fn submit(app: &TestApp, token: &str, answers: Vec<SurveyAnswer>) -> Result<(), Status> {
    app.surveys()
        .submit_response(SubmitResponseRequest {
            token: token.into(),
            answers,
        })
        .await
        .map(drop)
}

/// Invites and answers for `n` respondents of each plan.
async fn respond(app: &TestApp, survey: &str, plans: &[(&str, usize)]) {
    for (plan, n) in plans {
        for i in 0..*n {
            let email = format!("{plan}{i}@example.com");
            let token = invite(app, survey, &email, &[("plan", plan), ("tenant", "acme")]).await;
            let score = (i % 5) as i32 + 1;
            submit(app, &token, answers(score, &format!("{plan} comment {i}")))
                .await
                .expect("submit");
        }
    }
}

fn filter(key: &str, values: &[&str]) -> SegmentFilter {
    SegmentFilter {
        key: key.into(),
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    }
}

async fn results(
    app: &TestApp,
    survey: &str,
    segment_by: &str,
    filters: Vec<SegmentFilter>,
) -> Result<SurveyResults, Status> {
    app.surveys()
        .get_survey_results(GetSurveyResultsRequest {
            survey: survey.into(),
            segment_by: segment_by.into(),
            filters,
        })
        .await
        .map(|r| r.into_inner())
}

fn question_of<'a>(
    group: &'a ResultGroup,
    id: &str,
) -> &'a custodian_proto::feedback::v1::QuestionResult {
    group
        .questions
        .iter()
        .find(|q| q.question == id)
        .expect("the question's result")
}

/// Rows of each survey table, for "nothing stored".
async fn rows(app: &TestApp) -> Vec<i64> {
    let mut out = Vec::new();
    for table in [
        "feedback_surveys",
        "feedback_survey_invitations",
        "feedback_survey_links",
        "feedback_survey_responses",
        "feedback_survey_answers",
        "feedback_survey_served",
        "feedback_survey_aggregates",
    ] {
        out.push(app.count(table).await);
    }
    out
}

fn email_subject(e: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Email(e.into())),
    })
}

/// Where `marker` is found in plaintext in the test's database: on
/// SQLite, in the bytes of every file of its folder (the database, its log
/// and shared memory); on PostgreSQL, in any row of any table.
async fn plaintext(app: &TestApp, marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    if app.db.url.starts_with("sqlite:") {
        let mut folders = vec![app.db.dir().to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).expect("the test's folder") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    folders.push(path);
                } else if std::fs::read(&path)
                    .expect("a file of the test's folder")
                    .windows(marker.len())
                    .any(|w| w == marker.as_bytes())
                {
                    found.push(path.display().to_string());
                }
            }
        }
    } else {
        let tables: Vec<String> = sqlx::query(
            "SELECT table_name::text AS t FROM information_schema.tables \
             WHERE table_schema = 'public'",
        )
        .fetch_all(&app.raw)
        .await
        .expect("the tables")
        .iter()
        .map(|r| r.try_get("t").unwrap())
        .collect();
        assert!(tables.len() > 10, "{tables:?}");
        for table in tables {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT t::text AS row FROM {table} t"
            )))
            .fetch_all(&app.raw)
            .await
            .expect("rows as text");
            if rows
                .iter()
                .any(|r| r.try_get::<String, _>("row").unwrap().contains(marker))
            {
                found.push(table);
            }
        }
    }
    found
}

/// A server on the same database and keys as `app`'s, as after a restart
/// (`app`'s own is stopped first); its address and a way to stop it.
async fn restart(
    app: &mut TestApp,
) -> (
    tonic::transport::Channel,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    app.signal_stop();
    if let Some(task) = app.take_task() {
        task.await.expect("the server task").expect("a clean stop");
    }
    let config = custodian_tests::test_config(&app.db);
    let suite = custodian::suite(
        custodian::Target::All,
        &config,
        &app.keys,
        app.clock.clone(),
    )
    .expect("suite");
    let server = custodian::bind(config, suite).await.expect("bind");
    let addr = server.local_addr();
    let mut ready = server.readiness();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_with_shutdown(async move {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r))
        .await
        .expect("ready within 30s")
        .expect("server task alive");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    (channel, stop, task)
}

// --- tests -----------------------------------------------------------------

storage_test!(
    a_group_under_k_is_suppressed_and_one_of_k_shown,
    |app: TestApp| async move {
        let survey = open_survey(&app).await;
        respond(&app, &survey, &[("pro", 4), ("team", 5), ("free", 6)]).await;

        // k-1 respondents: nothing but the flag.
        let pro = results(&app, &survey, "", vec![filter("plan", &["pro"])])
            .await
            .expect("a suppressed answer is an answer");
        let total = pro.total.unwrap();
        assert!(total.suppressed);
        assert_eq!(total.respondents, 0);
        assert!(total.questions.is_empty());
        assert_eq!(pro.min_respondents, 5);

        // k respondents: counts, distributions, averages, NPS and text.
        let team = results(&app, &survey, "", vec![filter("plan", &["team"])])
            .await
            .expect("a group of k");
        let total = team.total.unwrap();
        assert!(!total.suppressed);
        assert_eq!(total.respondents, 5);
        let ease = question_of(&total, "ease");
        assert_eq!(ease.answers, 5);
        let counts: Vec<i64> = ease.distribution.iter().map(|c| c.count).collect();
        assert_eq!(counts, vec![1, 1, 1, 1, 1]);
        assert!((ease.average - 3.0).abs() < 1e-9);
        let nps = question_of(&total, "recommend");
        // Scores 2, 4, 6, 8, 10: three detractors, one promoter.
        assert!((nps.nps - (-40.0)).abs() < 1e-9, "{}", nps.nps);
        let fit = question_of(&total, "fit");
        assert_eq!(fit.distribution[0].value, "yes");
        assert_eq!(fit.distribution[0].count, 3);
        let features = question_of(&total, "features");
        assert_eq!(features.distribution.len(), 3);
        assert_eq!(features.distribution[0].count, 5);
        assert_eq!(features.distribution[1].count, 0);
        let mut texts = question_of(&total, "comment").texts.clone();
        texts.sort();
        assert_eq!(
            texts,
            (0..5)
                .map(|i| format!("team comment {i}"))
                .collect::<Vec<_>>()
        );
    }
);

storage_test!(
    a_breakdown_merges_small_segments_into_other,
    |app: TestApp| async move {
        let survey = open_survey(&app).await;
        respond(&app, &survey, &[("pro", 4), ("team", 6), ("free", 6)]).await;
        let by_plan = results(&app, &survey, "plan", vec![])
            .await
            .expect("breakdown");
        assert_eq!(by_plan.total.as_ref().unwrap().respondents, 16);
        let groups: Vec<(String, i64)> = by_plan
            .segments
            .iter()
            .map(|g| (g.segment_value.clone(), g.respondents))
            .collect();
        // "pro" (4) is under k: merged into "(other)" with the next smallest,
        // so no group can be had as the total minus the others.
        assert_eq!(groups, vec![("free".into(), 6), ("(other)".into(), 10)]);
        assert!(by_plan.segments.iter().all(|g| !g.suppressed));
    }
);

storage_test!(
    differencing_queries_are_refused,
    |app: TestApp| async move {
        let survey = open_survey(&app).await;
        respond(&app, &survey, &[("pro", 5), ("team", 2), ("free", 8)]).await;

        let pro = results(&app, &survey, "", vec![filter("plan", &["pro"])])
            .await
            .expect("5 of 15");
        assert_eq!(pro.total.unwrap().respondents, 5);
        let before = rows(&app).await;

        // pro and team differ from pro by the 2 team respondents.
        let err = results(&app, &survey, "", vec![filter("plan", &["pro", "team"])])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(!err.message().contains("team"));
        assert_eq!(rows(&app).await, before, "a refused query is not logged");

        // The total minus pro and free is the 2 team respondents.
        let err = results(&app, &survey, "", vec![filter("plan", &["pro", "free"])])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert_eq!(rows(&app).await, before);

        // The same group again, and the total, tell nothing new.
        results(&app, &survey, "", vec![filter("plan", &["pro"])])
            .await
            .expect("the same set again");
        let all = results(&app, &survey, "", vec![]).await.expect("the total");
        assert_eq!(all.total.unwrap().respondents, 15);

        // One more response: the total before and after would single it out.
        let token = invite(&app, &survey, "late@example.com", &[("plan", "free")]).await;
        submit(&app, &token, answers(3, "")).await.expect("submit");
        let err = results(&app, &survey, "", vec![]).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
    }
);

storage_test!(
    bad_input_is_refused_and_nothing_stored,
    |app: TestApp| async move {
        let draft = create(&app).await;
        let draft_token = invite(&app, &draft.name, "draft@example.com", &[]).await;
        let survey = open_survey(&app).await;
        let token = invite(&app, &survey, "ann@example.com", &[("plan", "pro")]).await;
        let other = invite(&app, &survey, "ben@example.com", &[("plan", "pro")]).await;
        let before = rows(&app).await;

        let check = |status: Status, code: Code| {
            assert_eq!(status.code(), code, "{}", status.message());
        };
        // An answer to a question the survey does not have.
        let mut unknown = answers(3, "");
        unknown.push(answer("colour", Value::Score(3)));
        check(
            submit(&app, &token, unknown).await.unwrap_err(),
            Code::InvalidArgument,
        );
        // Text for a rating.
        let mut wrong = answers(3, "");
        wrong[0] = answer("ease", Value::Text("great".into()));
        check(
            submit(&app, &token, wrong).await.unwrap_err(),
            Code::InvalidArgument,
        );
        // A rating out of range, an option the question lacks, a missing answer.
        let mut range = answers(3, "");
        range[0] = answer("ease", Value::Score(6));
        check(
            submit(&app, &token, range).await.unwrap_err(),
            Code::InvalidArgument,
        );
        let mut option = answers(3, "");
        option[1] = answer("fit", Value::Choice("maybe".into()));
        check(
            submit(&app, &token, option).await.unwrap_err(),
            Code::InvalidArgument,
        );
        let mut missing = answers(3, "");
        missing.remove(0);
        check(
            submit(&app, &token, missing).await.unwrap_err(),
            Code::InvalidArgument,
        );
        // A survey still in draft takes no answer.
        check(
            submit(&app, &draft_token, answers(3, ""))
                .await
                .unwrap_err(),
            Code::FailedPrecondition,
        );
        // A made-up token.
        check(
            submit(&app, &"ab".repeat(32), answers(3, ""))
                .await
                .unwrap_err(),
            Code::FailedPrecondition,
        );
        assert_eq!(rows(&app).await, before, "nothing stored");

        // Once: a second response on the same invitation stores nothing.
        submit(&app, &token, answers(3, "fine"))
            .await
            .expect("first");
        let after_first = rows(&app).await;
        check(
            submit(&app, &token, answers(1, "again")).await.unwrap_err(),
            Code::AlreadyExists,
        );
        assert_eq!(rows(&app).await, after_first);

        // The questions of an open survey are fixed.
        let err = app
            .surveys()
            .update_survey(UpdateSurveyRequest {
                survey: Some(Survey {
                    name: survey.clone(),
                    questions: vec![question("ease", Kind::Nps, &[])],
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["questions".into()],
                }),
            })
            .await
            .unwrap_err();
        check(err, Code::FailedPrecondition);
        let err = app
            .surveys()
            .update_survey(UpdateSurveyRequest {
                survey: Some(Survey {
                    name: survey.clone(),
                    min_respondents: 3,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["min_respondents".into()],
                }),
            })
            .await
            .unwrap_err();
        check(err, Code::FailedPrecondition);
        // k is never below 3, even in draft.
        let err = app
            .surveys()
            .update_survey(UpdateSurveyRequest {
                survey: Some(Survey {
                    name: draft.name.clone(),
                    min_respondents: 2,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["min_respondents".into()],
                }),
            })
            .await
            .unwrap_err();
        check(err, Code::InvalidArgument);
        assert_eq!(rows(&app).await, after_first);

        // An answer to a closed survey.
        close(&app, &survey).await;
        let closed = rows(&app).await;
        check(
            submit(&app, &other, answers(3, "")).await.unwrap_err(),
            Code::FailedPrecondition,
        );
        assert_eq!(rows(&app).await, closed);
        // Nobody more is invited to a closed survey, and it does not reopen.
        let err = app
            .surveys()
            .create_invitation(CreateInvitationRequest {
                parent: survey.clone(),
                invitation: Some(SurveyInvitation {
                    email: "cat@example.com".into(),
                    ..Default::default()
                }),
                segments: vec![],
            })
            .await
            .unwrap_err();
        check(err, Code::FailedPrecondition);
        let err = app
            .surveys()
            .open_survey(OpenSurveyRequest {
                name: survey.clone(),
            })
            .await
            .unwrap_err();
        check(err, Code::FailedPrecondition);
        assert_eq!(rows(&app).await, closed);
    }
);

storage_test!(
    close_destroys_the_links_and_the_aggregates_outlive_the_responses,
    |app: TestApp| async move {
        let survey = open_survey(&app).await;
        respond(&app, &survey, &[("pro", 3), ("team", 3)]).await;
        let token = invite(&app, &survey, "dan@example.com", &[("plan", "pro")]).await;
        submit(&app, &token, answers(5, "paid by invoice"))
            .await
            .expect("submit");
        assert_eq!(app.count("feedback_survey_links").await, 7);

        let before = results(&app, &survey, "", vec![]).await.expect("results");
        let total = before.total.clone().unwrap();
        assert_eq!(total.respondents, 7);
        let texts = &question_of(&total, "comment").texts;
        assert_eq!(texts.len(), 7);
        assert!(texts.contains(&"paid by invoice".to_owned()), "{texts:?}");

        close(&app, &survey).await;
        // No row ties an invitation (a person) to a response any more.
        assert_eq!(app.count("feedback_survey_links").await, 0);
        assert_eq!(app.count("feedback_survey_invitations").await, 7);
        let row = sqlx::query("SELECT * FROM feedback_survey_responses")
            .fetch_one(&app.raw)
            .await
            .expect("a response");
        let mut columns: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
        columns.sort();
        assert_eq!(columns, vec!["id", "segments", "survey_id"]);
        let ids: Vec<String> = sqlx::query("SELECT id FROM feedback_survey_responses")
            .fetch_all(&app.raw)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get("id").unwrap())
            .collect();
        // Random ids, not ids that sort by time.
        assert!(ids.iter().all(|id| id.len() == 32 && !id.contains('-')));

        // Until the sweep, the results come from the responses.
        let closed = results(&app, &survey, "", vec![]).await.expect("results");
        assert!(!closed.from_stored_aggregates);
        assert_eq!(closed.total.unwrap().respondents, 7);

        // 30 days after close the responses go; the aggregates stay.
        app.clock.advance(31 * DAY);
        let swept = app
            .retention()
            .sweep_expired(SweepExpiredRequest::default())
            .await
            .expect("sweep")
            .into_inner();
        let responses = swept
            .deleted
            .iter()
            .filter(|c| c.service == "feedback" && c.data_category == DataCategory::Feedback as i32)
            .map(|c| c.deleted)
            .sum::<i64>();
        assert!(responses >= 7, "{:?}", swept.deleted);
        assert_eq!(app.count("feedback_survey_responses").await, 0);
        assert_eq!(app.count("feedback_survey_answers").await, 0);
        assert_eq!(app.count("feedback_survey_served").await, 0);

        let after = results(&app, &survey, "", vec![])
            .await
            .expect("from aggregates");
        assert!(after.from_stored_aggregates);
        let kept = after.total.unwrap();
        assert_eq!(kept.respondents, 7);
        for id in ["ease", "fit", "features", "recommend"] {
            assert_eq!(question_of(&kept, id), question_of(&total, id), "{id}");
        }
        assert!(
            question_of(&kept, "comment").texts.is_empty(),
            "text goes with the responses"
        );
        let by_plan = results(&app, &survey, "plan", vec![])
            .await
            .expect("breakdown kept");
        assert!(by_plan.from_stored_aggregates);
        assert_eq!(
            by_plan.segments.len(),
            1,
            "3 and 4 are both under k: one group"
        );
        let err = results(&app, &survey, "", vec![filter("plan", &["pro"])])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
    }
);

storage_test!(
    erasing_a_respondent_before_close_removes_invitation_link_and_text,
    |app: TestApp| async move {
        let survey = open_survey(&app).await;
        respond(&app, &survey, &[("pro", 4)]).await;
        let token = invite(&app, &survey, "ann@example.com", &[("plan", "pro")]).await;
        submit(&app, &token, answers(4, "I am Ann from accounting"))
            .await
            .expect("submit");
        let answers_before = app.count("feedback_survey_answers").await;
        let texts = || async {
            sqlx::query(
                "SELECT COUNT(*) AS n FROM feedback_survey_answers WHERE sealed_text IS NOT NULL",
            )
            .fetch_one(&app.raw)
            .await
            .unwrap()
            .try_get::<i64, _>("n")
            .unwrap()
        };
        assert_eq!(texts().await, 5);

        let mut subjects = app.subjects_of("feedback");
        let found = subjects
            .locate_subject_data(LocateSubjectDataRequest {
                subject: email_subject("Ann@Example.com"),
                ..Default::default()
            })
            .await
            .expect("locate")
            .into_inner()
            .records;
        assert_eq!(found.len(), 1, "{found:?}");
        let erased = subjects
            .erase_subject_data(EraseSubjectDataRequest {
                subject: email_subject("ann@example.com"),
                ..Default::default()
            })
            .await
            .expect("erase")
            .into_inner()
            .erased;
        let names: BTreeSet<String> = erased.iter().map(|r| r.resource.clone()).collect();
        assert_eq!(names.len(), 2, "the invitation and its link: {names:?}");
        assert_eq!(app.count("feedback_survey_invitations").await, 4);
        assert_eq!(app.count("feedback_survey_links").await, 4);
        assert_eq!(texts().await, 4, "Ann's free text is gone");
        assert_eq!(
            app.count("feedback_survey_answers").await,
            answers_before - 1,
            "her other answers stay, tied to no one"
        );
        let again = subjects
            .locate_subject_data(LocateSubjectDataRequest {
                subject: email_subject("ann@example.com"),
                ..Default::default()
            })
            .await
            .expect("locate")
            .into_inner()
            .records;
        assert!(again.is_empty());

        // An authorized user, invited by name and erased by it.
        let user = "tenants/acme/users/0b0c3f55-1f4e-4b8e-9a57-4f1d2b9f5e11";
        let invited = app
            .surveys()
            .create_invitation(CreateInvitationRequest {
                parent: survey.clone(),
                invitation: Some(SurveyInvitation {
                    user: user.into(),
                    ..Default::default()
                }),
                segments: vec![],
            })
            .await
            .expect("invite a user")
            .into_inner();
        submit(&app, &invited.token, answers(2, "the user's words"))
            .await
            .expect("submit");
        assert_eq!(texts().await, 5);
        let erased = subjects
            .erase_subject_data(EraseSubjectDataRequest {
                subject: Some(SubjectIdentifier {
                    kind: Some(subject_identifier::Kind::Id(user.into())),
                }),
                ..Default::default()
            })
            .await
            .expect("erase a user")
            .into_inner()
            .erased;
        assert_eq!(erased.len(), 2, "{erased:?}");
        assert_eq!(texts().await, 4);
        assert_eq!(app.count("feedback_survey_links").await, 4);

        // After close there is no link: erasure finds the invitation only.
        close(&app, &survey).await;
        let erased = subjects
            .erase_subject_data(EraseSubjectDataRequest {
                subject: email_subject("pro0@example.com"),
                ..Default::default()
            })
            .await
            .expect("erase")
            .into_inner()
            .erased;
        assert_eq!(erased.len(), 1, "{erased:?}");
        assert_eq!(texts().await, 4, "an unlinked response is no one's");
        let survey_now = app
            .surveys()
            .get_survey(GetSurveyRequest { name: survey })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(survey_now.state, State::Closed as i32);
    }
);

storage_test!(
    free_text_with_sensitive_data_is_refused_and_nothing_stored,
    |app: TestApp| async move {
        let survey = open_survey(&app).await;
        let token = invite(&app, &survey, "ann@example.com", &[("plan", "pro")]).await;
        let before = rows(&app).await;
        for text in [
            format!("I am Zelda Zonk, card {CARD}, call me"),
            "refund to DE89 3704 0044 0532 0130 00 please".to_owned(),
        ] {
            let err = submit(&app, &token, answers(4, &text)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
            let fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
            assert_eq!(fields, ["answers[4].text"], "{}", err.message());
            for part in ["4111", "1111", "3704", "Zelda"] {
                assert!(!err.message().contains(part), "{}", err.message());
            }
            assert_eq!(rows(&app).await, before, "nothing stored");
        }
        // The invitation is still unanswered: the same person answers
        // without it.
        submit(&app, &token, answers(4, "I am Zelda Zonk, call me"))
            .await
            .expect("a text without sensitive data");
    }
);

storage_test!(
    free_text_is_sealed_at_rest_and_its_key_goes_with_it,
    |app: TestApp| async move {
        const MARKER: &str = "quokka-lantern-4471";
        let survey = open_survey(&app).await;
        for i in 0..5 {
            let token = invite(&app, &survey, &format!("r{i}@example.com"), &[]).await;
            submit(&app, &token, answers(3, &format!("{MARKER} says {i}")))
                .await
                .expect("submit");
        }
        // The results show the text as it was written.
        let shown = |results: SurveyResults| {
            let mut texts = question_of(&results.total.unwrap(), "comment")
                .texts
                .clone();
            texts.sort();
            texts
        };
        let written: Vec<String> = (0..5).map(|i| format!("{MARKER} says {i}")).collect();
        let open_results = results(&app, &survey, "", vec![]).await.expect("results");
        assert_eq!(shown(open_results), written);
        // On disk, never.
        assert_eq!(plaintext(&app, MARKER).await, Vec::<String>::new());
        let sealed: Vec<String> = sqlx::query(
            "SELECT sealed_text FROM feedback_survey_answers WHERE sealed_text IS NOT NULL",
        )
        .fetch_all(&app.raw)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("sealed_text").unwrap())
        .collect();
        assert_eq!(sealed.len(), 5);
        assert!(sealed.iter().all(|s| s.starts_with("v1.")), "{sealed:?}");

        // Close writes the answers again (sealed again): still shown, still
        // nowhere in plaintext.
        close(&app, &survey).await;
        let closed = results(&app, &survey, "", vec![]).await.expect("results");
        assert_eq!(shown(closed), written);
        assert_eq!(plaintext(&app, MARKER).await, Vec::<String>::new());
        let key: String = sqlx::query("SELECT text_key FROM feedback_surveys")
            .fetch_one(&app.raw)
            .await
            .unwrap()
            .try_get("text_key")
            .unwrap();
        let keys = || async {
            sqlx::query("SELECT COUNT(*) AS n FROM subject_keys WHERE id = $1")
                .bind(&key)
                .fetch_one(&app.raw)
                .await
                .unwrap()
                .try_get::<i64, _>("n")
                .unwrap()
        };
        assert_eq!(keys().await, 1);

        // The sweep deletes the responses and destroys the key with them:
        // a copy of the sealed text (a backup) opens no more.
        app.clock.advance(31 * DAY);
        app.retention()
            .sweep_expired(SweepExpiredRequest::default())
            .await
            .expect("sweep");
        assert_eq!(app.count("feedback_survey_answers").await, 0);
        assert_eq!(keys().await, 0, "the survey's text key is destroyed");
        let cleared: Option<String> = sqlx::query("SELECT text_key FROM feedback_surveys")
            .fetch_one(&app.raw)
            .await
            .unwrap()
            .try_get("text_key")
            .unwrap();
        assert_eq!(cleared, None);
        let kept = results(&app, &survey, "", vec![])
            .await
            .expect("aggregates");
        assert!(kept.from_stored_aggregates);
        assert_eq!(kept.total.unwrap().respondents, 5);
    }
);

storage_test!(
    plaintext_an_older_version_left_is_sealed_at_start_up,
    |mut app: TestApp| async move {
        const MARKER: &str = "wombat-ledger-9032";
        let survey = open_survey(&app).await;
        respond(&app, &survey, &[("pro", 5)]).await;
        // The rows as an older version wrote them: the text in plaintext,
        // nothing sealed, no key for the survey.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE feedback_survey_answers SET text = '{MARKER} ' || question, \
             sealed_text = NULL WHERE sealed_text IS NOT NULL"
        )))
        .execute(&app.raw)
        .await
        .unwrap();
        sqlx::query("DELETE FROM subject_keys WHERE id IN (SELECT text_key FROM feedback_surveys)")
            .execute(&app.raw)
            .await
            .unwrap();
        sqlx::query("UPDATE feedback_surveys SET text_key = NULL")
            .execute(&app.raw)
            .await
            .unwrap();
        assert!(!plaintext(&app, MARKER).await.is_empty(), "the old rows");

        let (channel, stop, task) = restart(&mut app).await;
        let plain =
            sqlx::query("SELECT COUNT(*) AS n FROM feedback_survey_answers WHERE text IS NOT NULL")
                .fetch_one(&app.raw)
                .await
                .unwrap()
                .try_get::<i64, _>("n")
                .unwrap();
        assert_eq!(plain, 0);
        assert_eq!(
            plaintext(&app, MARKER).await,
            Vec::<String>::new(),
            "no plaintext left, in rows or in the files"
        );
        // Sealed, and read back as it was.
        let surveys_channel = channel.clone();
        let mut surveys = custodian_proto::feedback::v1::survey_service_client::SurveyServiceClient::with_interceptor(
            channel,
            Bearer::new(Some(&app.root_token)),
        );
        let total = surveys
            .get_survey_results(GetSurveyResultsRequest {
                survey: survey.clone(),
                ..Default::default()
            })
            .await
            .expect("results")
            .into_inner()
            .total
            .unwrap();
        let texts = &question_of(&total, "comment").texts;
        assert_eq!(texts.len(), 5);
        assert!(
            texts.iter().all(|t| t == &format!("{MARKER} comment")),
            "{texts:?}"
        );

        // A replica not yet upgraded writes plaintext meanwhile: shown, and
        // sealed by the next sweep.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE feedback_survey_answers SET text = '{MARKER} late', sealed_text = NULL \
             WHERE response_id = (SELECT MIN(response_id) FROM feedback_survey_answers \
             WHERE sealed_text IS NOT NULL) AND sealed_text IS NOT NULL"
        )))
        .execute(&app.raw)
        .await
        .unwrap();
        assert!(!plaintext(&app, &format!("{MARKER} late")).await.is_empty());
        custodian_proto::retention::v1::retention_service_client::RetentionServiceClient::with_interceptor(
            surveys_channel.clone(),
            Bearer::new(Some(&app.root_token)),
        )
        .sweep_expired(SweepExpiredRequest::default())
        .await
        .expect("sweep");
        assert_eq!(plaintext(&app, MARKER).await, Vec::<String>::new());
        let total = surveys
            .get_survey_results(GetSurveyResultsRequest {
                survey: survey.clone(),
                ..Default::default()
            })
            .await
            .expect("results")
            .into_inner()
            .total
            .unwrap();
        let mut texts = question_of(&total, "comment").texts.clone();
        texts.sort();
        assert_eq!(texts[0], format!("{MARKER} comment"));
        assert_eq!(texts[4], format!("{MARKER} late"));
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
);

storage_test!(the_standard_methods, |app: TestApp| async move {
    let request = CreateSurveyRequest {
        survey: Some(Survey {
            title: "  Pricing page  ".into(),
            questions: questions(),
            min_respondents: 7,
            ..Default::default()
        }),
        request_id: "9f1c6c1e-2d7e-4d37-9a8e-0c3f0e6b8a11".into(),
    };
    let first = app
        .surveys()
        .create_survey(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.title, "Pricing page");
    assert_eq!(first.state, State::Draft as i32);
    assert_eq!(first.min_respondents, 7);
    let again = app
        .surveys()
        .create_survey(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.name, first.name, "a retry creates nothing new");
    let second = open_survey(&app).await;
    let got = app
        .surveys()
        .get_survey(GetSurveyRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, first);

    // Titles change in any state; a draft's questions too.
    let updated = app
        .surveys()
        .update_survey(UpdateSurveyRequest {
            survey: Some(Survey {
                name: first.name.clone(),
                title: "Pricing page, v2".into(),
                questions: vec![question("ease", Kind::Rating, &[])],
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["title".into(), "questions".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.title, "Pricing page, v2");
    assert_eq!(updated.questions.len(), 1);
    let err = app
        .surveys()
        .update_survey(UpdateSurveyRequest {
            survey: Some(Survey {
                name: first.name.clone(),
                questions: vec![question("fit", Kind::SingleChoice, &["only one"])],
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["questions".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let list = |state: State, size: i32, token: String| {
        let app = &app;
        async move {
            app.surveys()
                .list_surveys(ListSurveysRequest {
                    page_size: size,
                    page_token: token,
                    state: state as i32,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let page = list(State::Unspecified, 1, String::new()).await;
    assert_eq!(page.surveys.len(), 1);
    let rest = list(State::Unspecified, 1, page.next_page_token.clone()).await;
    assert_eq!(rest.surveys.len(), 1);
    assert!(rest.next_page_token.is_empty());
    let open_ones = list(State::Open, 10, String::new()).await;
    let names: Vec<String> = open_ones.surveys.into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec![second.clone()]);

    // Deleting a survey takes its invitations, responses and aggregates.
    respond(&app, &second, &[("pro", 5)]).await;
    close(&app, &second).await;
    app.surveys()
        .delete_survey(DeleteSurveyRequest {
            name: second.clone(),
        })
        .await
        .unwrap();
    assert_eq!(rows(&app).await, vec![1, 0, 0, 0, 0, 0, 0]);
    let err = app
        .surveys()
        .get_survey(GetSurveyRequest { name: second })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
});

/// Every message type reachable from `message` through its fields.
fn reachable(message: &MessageDescriptor, out: &mut BTreeSet<String>) {
    if !out.insert(message.full_name().to_owned()) {
        return;
    }
    for field in message.fields() {
        if let FieldKind::Message(inner) = field.kind() {
            reachable(&inner, out);
        }
    }
}

/// No method of any service, whatever the purpose of its caller, answers
/// with a message that can hold one respondent's answers.
#[test]
fn no_method_returns_one_respondents_answers() {
    let per_respondent = [
        "custodian.feedback.v1.SurveyAnswer",
        "custodian.feedback.v1.SurveyChoices",
    ];
    let mut methods = 0;
    for service in DESCRIPTOR_POOL.services() {
        for method in service.methods() {
            methods += 1;
            let mut out = BTreeSet::new();
            reachable(&method.output(), &mut out);
            for message in per_respondent {
                assert!(
                    !out.contains(message),
                    "{}/{} can answer with {message}",
                    service.full_name(),
                    method.name()
                );
            }
        }
    }
    assert!(
        methods > 50,
        "the walk saw every service ({methods} methods)"
    );
    // The walk does find the type where it is: in the one request that
    // carries it in.
    let submit = DESCRIPTOR_POOL
        .get_message_by_name("custodian.feedback.v1.SubmitResponseRequest")
        .expect("SubmitResponseRequest");
    let mut out = BTreeSet::new();
    reachable(&submit, &mut out);
    assert!(out.contains(per_respondent[0]));
    assert!(
        DESCRIPTOR_POOL
            .services()
            .any(|s| s.full_name() == "custodian.feedback.v1.SurveyService")
    );
}
