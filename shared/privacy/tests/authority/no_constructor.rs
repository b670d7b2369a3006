// No public constructor to reach for instead.
use custodian_privacy::{Access, Caller, Purpose};

fn main() {
    let _caller = Caller::new("ops:mallory", Purpose::ALL.to_vec(), None);
    let _access = Access::new();
    let _default = Caller::default();
}
