//! The Custodian contracts as Rust: prost messages, tonic clients and servers.
//!
//! Generated at build time from `proto/` (the source of truth). Services depend
//! on this crate and never compile protos themselves. Every message implements
//! [`prost_reflect::ReflectMessage`], so the privacy declarations written on
//! the contracts (`custodian.privacy.v1` options) can be read at run time.

use std::sync::LazyLock;

pub use prost_reflect;

/// Encoded `FileDescriptorSet` of every contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/custodian_descriptor.bin"));

/// Every contract, with its options (the privacy declarations) decoded.
pub static DESCRIPTOR_POOL: LazyLock<prost_reflect::DescriptorPool> = LazyLock::new(|| {
    prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built with this crate decodes")
});

pub mod privacy {
    pub mod v1 {
        tonic::include_proto!("custodian.privacy.v1");
    }
}

pub mod common {
    pub mod v1 {
        tonic::include_proto!("custodian.common.v1");
        /// The category now lives with the rest of the privacy vocabulary.
        pub use crate::privacy::v1::DataCategory;
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("custodian.identity.v1");
    }
}

pub mod tickets {
    pub mod v1 {
        tonic::include_proto!("custodian.tickets.v1");
    }
}

pub mod feedback {
    pub mod v1 {
        tonic::include_proto!("custodian.feedback.v1");
    }
}

pub mod analytics {
    pub mod v1 {
        tonic::include_proto!("custodian.analytics.v1");
    }
}

pub mod dsr {
    pub mod v1 {
        tonic::include_proto!("custodian.dsr.v1");
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
        /// The audit vocabulary lives with the rest of the privacy vocabulary.
        pub use crate::privacy::v1::{AuditAction, AuditOutcome};
    }
}

pub mod retention {
    pub mod v1 {
        tonic::include_proto!("custodian.retention.v1");
    }
}
