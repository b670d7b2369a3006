//! The Custodian contracts as Rust: prost messages, tonic clients and servers.
//!
//! Generated at build time from `proto/` (the source of truth). Services depend
//! on this crate and never compile protos themselves.

/// Encoded `FileDescriptorSet` of every contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/custodian_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("custodian.common.v1");
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("custodian.identity.v1");
    }
}

pub mod subject {
    pub mod v1 {
        tonic::include_proto!("custodian.subject.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("custodian.audit.v1");
    }
}

pub mod retention {
    pub mod v1 {
        tonic::include_proto!("custodian.retention.v1");
    }
}
