// A caller claiming every purpose and no tenant limit, written by hand.
use custodian_privacy::{Caller, Purpose};

fn main() {
    let _forged = Caller {
        subject: "ops:mallory".to_owned(),
        purposes: Purpose::ALL.to_vec(),
        tenant: None,
        requested_purpose: None,
        on_behalf_of: None,
        service: true,
    };
}
