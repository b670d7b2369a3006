// An access for any purpose, built around a caller from anywhere.
use custodian_privacy::{Access, Caller, Method, Purpose};
use custodian_proto::audit::v1::AuditAction;

fn forge(caller: Caller) -> Access {
    Access {
        caller,
        purpose: Purpose::DsrFulfilment,
        method: Method {
            path: "/custodian.subject.v1.SubjectDataService/EraseSubjectData",
            action: AuditAction::Erase,
            purposes: &[Purpose::DsrFulfilment],
        },
    }
}

fn main() {}
