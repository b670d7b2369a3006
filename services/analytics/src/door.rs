//! Privacy at the door: what an event becomes before anything is stored.
//! The full IP address and the user agent are read here and nowhere else;
//! what leaves is a truncated network, a parsed browser, OS and device
//! class, a path with only the site's kept parameters, a referrer host, and
//! (unless the visitor opted out) a keyed hash that changes every day.

use std::{
    net::IpAddr,
    sync::{Arc, LazyLock},
};

use custodian_proto::analytics::v1::{ConsentState, DropReason, event::Type};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::sites::SiteConfig;

/// Microseconds in a day.
pub const DAY_MICROS: i64 = 86_400_000_000;
/// How long after its day ends an event may arrive: the day is rolled up
/// then.
pub const LATE_MICROS: i64 = 3_600_000_000;
/// How far ahead of the server's clock an event may be.
pub const AHEAD_MICROS: i64 = 300_000_000;
/// Longest engagement counted: a day.
pub const MAX_ENGAGED_MS: i64 = 86_400_000;

/// The UTC day of a time.
pub fn day_of(micros: i64) -> i64 {
    micros.div_euclid(DAY_MICROS)
}

/// Whether an event that happened at `time` may still be stored at `now`:
/// its day has not been rolled up (a day is, an hour after it ends), and
/// it is not more than [`AHEAD_MICROS`] ahead. So an event may be up to a
/// day and an hour old, as long as it arrives before its day's aggregates
/// are made; after that it could never be counted, and the aggregates are
/// never changed once made.
pub fn on_time(time: i64, now: i64) -> bool {
    day_of(time) >= day_of(now - LATE_MICROS) && time <= now + AHEAD_MICROS
}

/// An event as it arrived, after its schema was checked.
#[derive(Debug, Clone, Default)]
pub struct Arrived {
    pub site: String,
    pub kind: i32,
    pub url: String,
    pub referrer: String,
    pub user_agent: String,
    pub ip: Option<IpAddr>,
    /// Microseconds; `None` means "when received".
    pub time: Option<i64>,
    pub event_id: Option<String>,
    pub engaged_ms: i64,
    pub consent: ConsentState,
    pub opt_out: bool,
}

/// An event as it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Clean {
    pub site_id: String,
    pub day: i64,
    pub time: i64,
    pub event_id: Option<String>,
    pub kind: i32,
    pub path: String,
    pub referrer_host: String,
    pub browser: String,
    pub browser_major: String,
    pub os: String,
    pub device: String,
    pub network: String,
    pub visitor: Option<String>,
    pub engaged_ms: i64,
    pub consent: i32,
}

/// What the door decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep(Box<Clean>),
    /// Dropped, for the site (its id, or "" when unknown) and reason.
    Drop(String, DropReason),
}

/// Finds a site's settings by domain.
pub trait SiteLookup {
    fn by_domain(&self, domain: &str) -> Option<Arc<SiteConfig>>;
}

/// The day's salt, for visitor hashes.
pub trait SaltFor {
    /// `None` once the day's salt is destroyed (or too old to make).
    fn salt(&self, day: i64) -> Option<[u8; 32]>;
}

static PARSER: LazyLock<woothee::parser::Parser> = LazyLock::new(woothee::parser::Parser::new);
static BOTS: LazyLock<isbot::Bots> = LazyLock::new(isbot::Bots::default);

/// Browser, major version, OS and device class of a user agent.
pub fn parse_agent(user_agent: &str) -> (String, String, String, String) {
    match PARSER.parse(user_agent) {
        Some(r) => {
            let major = r.version.split('.').next().unwrap_or_default().to_owned();
            let device = match r.category {
                "pc" => "desktop",
                "smartphone" | "mobilephone" => "mobile",
                "appliance" => "appliance",
                _ => "other",
            };
            (
                r.name.to_owned(),
                if major == "UNKNOWN" {
                    String::new()
                } else {
                    major
                },
                r.os.to_owned(),
                device.to_owned(),
            )
        }
        None => (
            "UNKNOWN".to_owned(),
            String::new(),
            "UNKNOWN".to_owned(),
            "other".to_owned(),
        ),
    }
}

/// Whether a user agent is a bot, a crawler or a headless browser.
pub fn is_bot(user_agent: &str) -> bool {
    if user_agent.trim().is_empty() {
        return true;
    }
    // isbot's list knows crawlers and most automation; headless browsers
    // are named here too, since they are how scrapers look like people.
    let lower = user_agent.to_ascii_lowercase();
    BOTS.is_bot(user_agent)
        || lower.contains("headless")
        || lower.contains("phantomjs")
        || lower.contains("electron/")
        || PARSER
            .parse(user_agent)
            .is_some_and(|r| r.category == "crawler")
}

/// The address cut to what the site keeps: IPv4 to its first
/// `v4_bytes` bytes, IPv6 to its first `v6_bits` bits, the rest zero.
pub fn truncate_ip(ip: IpAddr, v4_bytes: u8, v6_bits: u8) -> String {
    // An IPv4 address mapped into IPv6 is an IPv4 visitor.
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return truncate_ip(IpAddr::V4(v4), v4_bytes, v6_bits);
    }
    match ip {
        IpAddr::V4(v4) => {
            let mut octets = v4.octets();
            for (i, o) in octets.iter_mut().enumerate() {
                if i >= usize::from(v4_bytes.min(3)) {
                    *o = 0;
                }
            }
            std::net::Ipv4Addr::from(octets).to_string()
        }
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_bits.min(64));
            let value = u128::from(v6);
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            std::net::Ipv6Addr::from(value & mask).to_string()
        }
    }
}

/// The path of `url` with only the kept query parameters, if it is an
/// http(s) URL of one of `hosts`.
pub fn clean_path(url: &str, hosts: &[String], kept: &[String]) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return None;
    }
    let host = parsed.host_str()?.to_ascii_lowercase();
    if !hosts.contains(&host) {
        return None;
    }
    let mut path = parsed.path().to_owned();
    if !kept.is_empty() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| kept.iter().any(|keep| keep == k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if !pairs.is_empty() {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            path.push('?');
            path.push_str(&query);
        }
    }
    Some(path)
}

/// The host of a referring URL; "" for none, for the site itself, or for
/// anything that is not an http(s) URL.
pub fn referrer_host(referrer: &str, own_hosts: &[String]) -> String {
    let Ok(parsed) = url::Url::parse(referrer) else {
        return String::new();
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return String::new();
    }
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    if own_hosts.contains(&host) {
        return String::new();
    }
    host
}

/// The visitor's hash for one site and day: HMAC-SHA256 under the day's
/// salt of the site, the full address and the user agent. Without the
/// salt, which is destroyed, nobody can recompute or link it.
pub fn visitor_hash(salt: &[u8; 32], site_id: &str, ip: IpAddr, user_agent: &str) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(salt).expect("HMAC takes any key length");
    mac.update(site_id.as_bytes());
    mac.update(&[0]);
    mac.update(ip.to_string().as_bytes());
    mac.update(&[0]);
    mac.update(user_agent.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// Decides what an event becomes at `now`.
pub fn admit(event: Arrived, sites: &dyn SiteLookup, salts: &dyn SaltFor, now: i64) -> Verdict {
    let domain = event.site.trim().to_ascii_lowercase();
    let Some(site) = sites.by_domain(&domain) else {
        return Verdict::Drop(String::new(), DropReason::UnknownSite);
    };
    let drop = |reason| Verdict::Drop(site.id.clone(), reason);
    if is_bot(&event.user_agent) {
        return drop(DropReason::Bot);
    }
    let time = event.time.unwrap_or(now);
    if !on_time(time, now) {
        return drop(DropReason::Invalid);
    }
    let Some(ip) = event.ip else {
        return drop(DropReason::Invalid);
    };
    let kind = Type::try_from(event.kind).unwrap_or(Type::Unspecified);
    let engaged_ms = match kind {
        Type::Pageview => 0,
        Type::Engagement if (0..=MAX_ENGAGED_MS).contains(&event.engaged_ms) => event.engaged_ms,
        _ => return drop(DropReason::Invalid),
    };
    let hosts = site.hosts();
    let Some(path) = clean_path(&event.url, &hosts, &site.kept_query_params) else {
        return drop(DropReason::Invalid);
    };
    let day = day_of(time);
    // Refused consent, Global Privacy Control or Do Not Track: counted,
    // but as nobody in particular.
    let anonymous = event.opt_out || event.consent == ConsentState::Refused;
    let visitor = if anonymous {
        None
    } else {
        match salts.salt(day) {
            Some(salt) => Some(visitor_hash(&salt, &site.id, ip, &event.user_agent)),
            None => return drop(DropReason::Invalid),
        }
    };
    let (browser, browser_major, os, device) = parse_agent(&event.user_agent);
    Verdict::Keep(Box::new(Clean {
        site_id: site.id.clone(),
        day,
        time,
        event_id: event.event_id.filter(|id| !id.is_empty()),
        kind: kind as i32,
        path,
        referrer_host: referrer_host(&event.referrer, &hosts),
        browser,
        browser_major,
        os,
        device,
        network: truncate_ip(ip, site.ipv4_bytes_kept, site.ipv6_bits_kept),
        visitor,
        engaged_ms,
        consent: event.consent as i32,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";

    #[test]
    fn ipv4_and_ipv6_are_cut_as_configured() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(truncate_ip(v4, 2, 48), "203.0.0.0");
        assert_eq!(truncate_ip(v4, 3, 48), "203.0.113.0");
        assert_eq!(truncate_ip(v4, 0, 48), "0.0.0.0");
        // Never the whole address, whatever the setting.
        assert_eq!(truncate_ip(v4, 4, 48), "203.0.113.0");
        let v6: IpAddr = "2001:db8:abcd:12:1:2:3:4".parse().unwrap();
        assert_eq!(truncate_ip(v6, 2, 48), "2001:db8:abcd::");
        let mapped: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        assert_eq!(truncate_ip(mapped, 2, 48), "198.51.0.0");
    }

    #[test]
    fn paths_keep_only_the_sites_parameters() {
        let hosts = vec!["example.com".to_owned()];
        let kept = vec!["page".to_owned()];
        assert_eq!(
            clean_path(
                "https://example.com/a/b?email=x%40y.z&page=2#top",
                &hosts,
                &kept
            )
            .as_deref(),
            Some("/a/b?page=2")
        );
        assert_eq!(
            clean_path("https://example.com/a?token=1", &hosts, &[]).as_deref(),
            Some("/a")
        );
        assert_eq!(clean_path("https://evil.test/a", &hosts, &[]), None);
        assert_eq!(clean_path("javascript:alert(1)", &hosts, &[]), None);
    }

    #[test]
    fn referrers_keep_only_their_host() {
        let own = vec!["example.com".to_owned()];
        assert_eq!(
            referrer_host("https://www.Google.com/search?q=secret", &own),
            "www.google.com"
        );
        assert_eq!(referrer_host("https://example.com/prev", &own), "");
        assert_eq!(referrer_host("", &own), "");
    }

    #[test]
    fn agents_are_parsed_and_bots_known() {
        let (browser, major, os, device) = parse_agent(CHROME);
        assert_eq!(
            (
                browser.as_str(),
                major.as_str(),
                os.as_str(),
                device.as_str()
            ),
            ("Chrome", "156", "Linux", "desktop")
        );
        assert!(!is_bot(CHROME));
        assert!(is_bot("Googlebot/2.1 (+http://www.google.com/bot.html)"));
        assert!(is_bot(&CHROME.replace("Chrome/", "HeadlessChrome/")));
        assert!(is_bot("curl/8.5.0"));
        assert!(is_bot(""));
    }

    #[test]
    fn the_hash_depends_on_salt_site_ip_and_agent() {
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        let a = visitor_hash(&[1; 32], "s1", ip, CHROME);
        assert_eq!(a.len(), 32);
        assert_eq!(a, visitor_hash(&[1; 32], "s1", ip, CHROME));
        assert_ne!(a, visitor_hash(&[2; 32], "s1", ip, CHROME));
        assert_ne!(a, visitor_hash(&[1; 32], "s2", ip, CHROME));
        assert_ne!(
            a,
            visitor_hash(&[1; 32], "s1", "203.0.113.78".parse().unwrap(), CHROME)
        );
    }

    #[test]
    fn events_are_on_time_until_their_day_is_rolled_up() {
        let hour = 3_600_000_000;
        // Half past midnight: yesterday is not rolled up until one o'clock.
        let now = 100 * DAY_MICROS + hour / 2;
        assert!(
            on_time(now - 24 * hour, now),
            "yesterday at half past midnight"
        );
        assert!(on_time(100 * DAY_MICROS - 1, now));
        assert!(
            !on_time(99 * DAY_MICROS - 1, now),
            "the day before yesterday"
        );
        assert!(on_time(now + AHEAD_MICROS, now));
        assert!(!on_time(now + AHEAD_MICROS + 1, now));
        // From one o'clock, yesterday is rolled up: a minute late is too late.
        let later = 100 * DAY_MICROS + hour;
        assert!(!on_time(100 * DAY_MICROS - 60_000_000, later));
        assert!(on_time(100 * DAY_MICROS, later));
        // Whatever is on time falls on a day not yet final.
        for t in [now - 24 * hour, now, now + AHEAD_MICROS] {
            assert!(day_of(t) > crate::rollup::last_final_day(now));
        }
    }
}
