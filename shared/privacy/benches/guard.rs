//! What the sensitive-data guard costs, on the texts it sees: short field
//! values (most calls), a digit-heavy business note, a 64 KiB mail body
//! without findings, the same with findings to redact, and 64 KiB of the
//! shapes that make its searches work hardest: digit lists, blocks of four
//! that each start a card candidate, groups that each start an IBAN
//! candidate.
//!
//! `cargo bench -p custodian-privacy --bench guard`; prints the median of
//! several rounds per input. Not a test: timings depend on the machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use custodian_privacy::{check, redact};

const FIELDS: &[&str] = &[
    "Head of Engineering",
    "Acme order notes",
    "ann@example.com",
    "+49 30 901820",
    "Customer prefers calls after 14:00, order 4411-2233",
    "Invoice 2026-0012345 paid on 07.12.2026, EUR 1,234.56",
    "Wholesale trade of machinery and equipment",
    "tenants/acme/contacts/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f",
];

const NOTE: &str = "Invoice 2026-0012345, order 4411-2233, call +1 (555) 123-4567 before 12/26. \
    Shipped 2026-12-07 14:30 via DHL 00340434161094042557, tracking 9405 5036 9930 0012 3456 78; \
    EUR 1,234.56 + VAT 19% = EUR 1,469.13. Ref PO 4500012345 / line 10, 20, 30. v2.14.3";

fn mail(with_findings: bool) -> String {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 64 * 1024 {
        text.push_str("> Hello team, about order 4411-2233 from 07.12.2026: ");
        text.push_str(NOTE);
        text.push('\n');
        if with_findings && i % 8 == 0 {
            text.push_str(
                "> my card 4111 1111 1111 1111 12/26 and IBAN DE89 3704 0044 0532 0130 00\n",
            );
        }
        i += 1;
    }
    text
}

/// Blocks of four whose every window of four is a Luhn-valid Visa number
/// and each group a possible IBAN start: every candidate is checked.
fn candidates() -> (String, String) {
    let blocks = "4111 ".repeat(64 * 1024 / 5);
    let ibans = "DE89 3704 0044 0532 0130 0X ".repeat(64 * 1024 / 28);
    (blocks, ibans)
}

fn digit_lists() -> String {
    let mut text = "1 ".repeat(8 * 1024);
    text.push_str(&"4111 4112 4113 4110 ".repeat(1024));
    text.push_str(&"12, 34, 56. ".repeat(2 * 1024));
    text
}

/// Median time of one call of `f`, over rounds of `iterations` calls.
fn median(iterations: u32, mut f: impl FnMut()) -> Duration {
    let mut rounds: Vec<Duration> = (0..9)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed() / iterations
        })
        .collect();
    rounds.sort();
    rounds[rounds.len() / 2]
}

fn main() {
    let clean_mail = mail(false);
    let dirty_mail = mail(true);
    let lists = digit_lists();
    let (blocks, ibans) = candidates();
    assert!(check(&clean_mail).is_ok() && check(&dirty_mail).is_err());

    let report = |name: &str, bytes: usize, time: Duration| {
        let mib_s = bytes as f64 / time.as_secs_f64() / (1024.0 * 1024.0);
        println!("{name:<40} {time:>12.2?} per call  {mib_s:>8.1} MiB/s");
    };
    let field_bytes = FIELDS.iter().map(|f| f.len()).sum();
    report(
        "check: 8 short field values",
        field_bytes,
        median(20_000, || {
            for field in FIELDS {
                let _ = black_box(check(black_box(field)));
            }
        }),
    );
    report(
        "check: digit-heavy note",
        NOTE.len(),
        median(20_000, || {
            let _ = black_box(check(black_box(NOTE)));
        }),
    );
    report(
        "check: 64 KiB mail, clean",
        clean_mail.len(),
        median(50, || {
            let _ = black_box(check(black_box(&clean_mail)));
        }),
    );
    report(
        "redact: 64 KiB mail, clean",
        clean_mail.len(),
        median(50, || {
            black_box(redact(black_box(&clean_mail)));
        }),
    );
    report(
        "redact: 64 KiB mail, a card and IBAN per 8 lines",
        dirty_mail.len(),
        median(5, || {
            black_box(redact(black_box(&dirty_mail)));
        }),
    );
    report(
        "check: 64 KiB of digit lists",
        lists.len(),
        median(50, || {
            let _ = black_box(check(black_box(&lists)));
        }),
    );
    report(
        "redact: 64 KiB of card-like blocks",
        blocks.len(),
        median(5, || {
            black_box(redact(black_box(&blocks)));
        }),
    );
    report(
        "check: 64 KiB of IBAN-like groups",
        ibans.len(),
        median(50, || {
            let _ = black_box(check(black_box(&ibans)));
        }),
    );
}
