//! Results in aggregate only, and the guard against differencing. Pure
//! functions over the responses of one survey, so the rules can be read
//! (and tested) apart from the storage:
//!
//! - a group of fewer than k respondents is suppressed, and so is a
//!   question fewer than k answered within a shown group;
//! - in a breakdown, groups under k are merged into "(other)", which takes
//!   in the next smallest groups until it counts k (complementary
//!   suppression), so no group can be had as the total minus the others;
//! - a served set of respondents A is refused when, for an earlier served
//!   set B, 0 < |A Δ B| < k, or when 0 < |total − A| < k.

use std::collections::{BTreeMap, BTreeSet};

use custodian_proto::feedback::v1::{
    QuestionResult, ResultGroup, Survey, ValueCount, survey_question::Kind,
};

/// The key of merged small groups.
pub const OTHER: &str = "(other)";
/// The group of respondents without a value for the key.
pub const NONE: &str = "(none)";

/// One stored answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Score(i64),
    Choices(Vec<String>),
    Text(String),
}

/// One response, as the aggregation reads it: no person, no time.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub id: String,
    pub segments: BTreeMap<String, String>,
    pub answers: BTreeMap<String, Value>,
}

/// Whether the difference of two sets singles out fewer than k people.
pub fn isolates(a: &BTreeSet<String>, b: &BTreeSet<String>, k: usize) -> bool {
    let diff = a.symmetric_difference(b).count();
    diff > 0 && diff < k
}

/// Whether `served` may be answered, given the survey's respondents
/// (`all`), the sets served before (`earlier`) and each other.
pub fn may_serve(
    served: &[BTreeSet<String>],
    all: &BTreeSet<String>,
    earlier: &[BTreeSet<String>],
    k: usize,
) -> bool {
    served.iter().enumerate().all(|(i, a)| {
        !isolates(a, all, k)
            && earlier.iter().all(|b| !isolates(a, b, k))
            && served[..i].iter().all(|b| !isolates(a, b, k))
    })
}

/// Splits `members` by their value of `key`, merging the groups under k
/// into [`OTHER`] until it counts k. Groups come largest first, then by
/// value; OTHER last.
pub fn breakdown<'a>(
    members: &[&'a Response],
    key: &str,
    k: usize,
) -> Vec<(String, Vec<&'a Response>)> {
    let mut groups: BTreeMap<String, Vec<&Response>> = BTreeMap::new();
    for r in members {
        let value = r
            .segments
            .get(key)
            .cloned()
            .unwrap_or_else(|| NONE.to_owned());
        groups.entry(value).or_default().push(r);
    }
    let mut groups: Vec<(String, Vec<&Response>)> = groups.into_iter().collect();
    // Largest first; ties by value, so the merge is deterministic.
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    let mut other: Vec<&Response> = Vec::new();
    while groups.last().is_some_and(|g| g.1.len() < k) {
        other.extend(groups.pop().map(|g| g.1).unwrap_or_default());
    }
    while !other.is_empty() && other.len() < k {
        match groups.pop() {
            Some(g) => other.extend(g.1),
            None => break,
        }
    }
    if !other.is_empty() {
        groups.push((OTHER.to_owned(), other));
    }
    groups
}

/// The respondents' ids.
pub fn ids(members: &[&Response]) -> BTreeSet<String> {
    members.iter().map(|r| r.id.clone()).collect()
}

/// Orders free-text answers at random.
pub type Shuffle<'a> = &'a dyn Fn(&mut Vec<String>);

/// The aggregate of one group. `shuffle` orders free-text answers at
/// random; `None` leaves them out (stored aggregates keep no text).
pub fn group(
    survey: &Survey,
    value: &str,
    members: &[&Response],
    k: usize,
    shuffle: Option<Shuffle<'_>>,
) -> ResultGroup {
    if members.len() < k {
        return ResultGroup {
            segment_value: value.to_owned(),
            suppressed: true,
            ..Default::default()
        };
    }
    let questions = survey
        .questions
        .iter()
        .map(|q| {
            let kind = Kind::try_from(q.kind).unwrap_or(Kind::Unspecified);
            let answers: Vec<&Value> = members
                .iter()
                .filter_map(|r| r.answers.get(&q.id))
                .collect();
            let mut result = QuestionResult {
                question: q.id.clone(),
                kind: q.kind,
                answers: answers.len() as i64,
                ..Default::default()
            };
            if answers.len() < k {
                return QuestionResult {
                    question: q.id.clone(),
                    kind: q.kind,
                    suppressed: true,
                    ..Default::default()
                };
            }
            let count =
                |pred: &dyn Fn(&Value) -> bool| answers.iter().filter(|a| pred(a)).count() as i64;
            match kind {
                Kind::Rating | Kind::Nps => {
                    let range = if kind == Kind::Rating { 1..=5 } else { 0..=10 };
                    result.distribution = range
                        .map(|s| ValueCount {
                            value: s.to_string(),
                            count: count(&|a| *a == Value::Score(s)),
                        })
                        .collect();
                    let scores: Vec<i64> = answers
                        .iter()
                        .filter_map(|a| match a {
                            Value::Score(s) => Some(*s),
                            _ => None,
                        })
                        .collect();
                    let n = scores.len().max(1) as f64;
                    result.average = scores.iter().sum::<i64>() as f64 / n;
                    if kind == Kind::Nps {
                        let promoters = scores.iter().filter(|s| **s >= 9).count() as f64;
                        let detractors = scores.iter().filter(|s| **s <= 6).count() as f64;
                        result.nps = (promoters - detractors) * 100.0 / n;
                    }
                }
                Kind::SingleChoice | Kind::MultipleChoice => {
                    result.distribution = q
                        .options
                        .iter()
                        .map(|o| ValueCount {
                            value: o.clone(),
                            count: count(&|a| matches!(a, Value::Choices(c) if c.contains(o))),
                        })
                        .collect();
                }
                Kind::FreeText => {
                    if let Some(shuffle) = shuffle {
                        // Only text the guard finds nothing in; in no order
                        // that could match a submission order.
                        let mut texts: Vec<String> = answers
                            .iter()
                            .filter_map(|a| match a {
                                Value::Text(t) if custodian_privacy::check(t).is_ok() => {
                                    Some(t.clone())
                                }
                                _ => None,
                            })
                            .collect();
                        shuffle(&mut texts);
                        result.texts = texts;
                    }
                }
                Kind::Unspecified => {}
            }
            result
        })
        .collect();
    ResultGroup {
        segment_value: value.to_owned(),
        suppressed: false,
        respondents: members.len() as i64,
        questions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responses(plans: &[(&str, usize)]) -> Vec<Response> {
        let mut out = Vec::new();
        for (plan, n) in plans {
            for i in 0..*n {
                let mut r = Response {
                    id: format!("{plan}-{i}"),
                    ..Default::default()
                };
                r.segments.insert("plan".into(), (*plan).into());
                out.push(r);
            }
        }
        out
    }

    #[test]
    fn small_groups_merge_until_other_counts_k() {
        let rs = responses(&[("pro", 6), ("team", 2), ("free", 5), ("basic", 1)]);
        let refs: Vec<&Response> = rs.iter().collect();
        let groups = breakdown(&refs, "plan", 5);
        let sizes: Vec<(String, usize)> =
            groups.iter().map(|(v, m)| (v.clone(), m.len())).collect();
        // team and basic (3) are too few together: free joins them.
        assert_eq!(sizes, vec![("pro".into(), 6), (OTHER.into(), 8)]);
        assert!(groups.iter().all(|g| g.1.len() >= 5));
    }

    #[test]
    fn a_difference_under_k_is_refused() {
        let all: BTreeSet<String> = (0..12).map(|i| i.to_string()).collect();
        let pro: BTreeSet<String> = (0..5).map(|i| i.to_string()).collect();
        let pro_team: BTreeSet<String> = (0..7).map(|i| i.to_string()).collect();
        let one = |s: &BTreeSet<String>| vec![s.clone()];
        assert!(may_serve(&one(&pro), &all, &[], 5));
        assert!(!may_serve(&one(&pro_team), &all, &one(&pro), 5));
        assert!(may_serve(&one(&pro), &all, &one(&pro), 5));
        let almost: BTreeSet<String> = (0..10).map(|i| i.to_string()).collect();
        assert!(!may_serve(&[almost], &all, &[], 5));
    }

    #[test]
    fn a_question_fewer_than_k_answered_is_suppressed_and_flagged_text_left_out() {
        use custodian_proto::feedback::v1::SurveyQuestion;
        let survey = Survey {
            questions: vec![
                SurveyQuestion {
                    id: "ease".into(),
                    kind: Kind::Rating as i32,
                    ..Default::default()
                },
                SurveyQuestion {
                    id: "comment".into(),
                    kind: Kind::FreeText as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut rs = responses(&[("pro", 6)]);
        for (i, r) in rs.iter_mut().enumerate() {
            r.answers.insert("ease".into(), Value::Score(3));
            if i < 5 {
                let text = if i == 0 {
                    "card 4111 1111 1111 1111".to_owned()
                } else {
                    format!("fine {i}")
                };
                r.answers.insert("comment".into(), Value::Text(text));
            }
        }
        let refs: Vec<&Response> = rs.iter().collect();
        let keep = |_: &mut Vec<String>| {};
        let shown = group(&survey, "", &refs, 5, Some(&keep));
        assert!(!shown.questions[0].suppressed);
        assert_eq!(shown.questions[1].answers, 5);
        assert_eq!(shown.questions[1].texts.len(), 4, "the card is left out");
        let fewer = group(&survey, "", &refs, 6, Some(&keep));
        assert!(fewer.questions[1].suppressed, "5 answered, k is 6");
        assert!(fewer.questions[1].texts.is_empty());
        assert!(group(&survey, "", &refs[..4], 5, None).suppressed);
    }
}
