// A verified access, widened after the fact: its tenant limit dropped and
// its purpose changed.
use custodian_privacy::{Access, Purpose};

fn widen(access: &mut Access) {
    access.caller.tenant = None;
    access.purpose = Purpose::DsrFulfilment;
}

fn main() {}
