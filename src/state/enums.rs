//! The enumerated fields of the document's records: [`Desired`], [`OperatorRequest`],
//! [`InstanceState`] and the lease state ([`LeaseState`], the allocator's own type), each
//! stored as one lowercase string, the encoding older agents write and read. Spec:
//! `protocol/state-schema.md`.

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

use crate::ports::LeaseState;

/// Enums stored in the document as one lowercase string each (the encoding agents have always
/// written, so older agents read them unchanged). A string this agent does not know makes the
/// entry malformed: hydration skips and counts it, like any other bad entry.
macro_rules! document_enum {
    (
        $(#[$meta:meta])*
        pub enum $type:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $type {
            $($(#[$variant_meta])* $variant,)*
        }

        impl $type {
            /// Every value, in declaration order.
            pub const ALL: &[$type] = &[$($type::$variant,)*];

            /// Its encoding in the document and in JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($type::$variant => $text,)*
                }
            }

            /// The value `text` encodes, if any.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($type::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "unknown {} `{text}`",
                        stringify!($type)
                    ))
                })
            }
        }

        impl Hydrate for $type {
            fn hydrate_string(text: &'_ str) -> Result<Self, autosurgeon::HydrateError> {
                Self::parse(text).ok_or_else(|| {
                    autosurgeon::HydrateError::unexpected(stringify!($type), text.to_string())
                })
            }
        }

        impl Reconcile for $type {
            type Key<'a> = autosurgeon::reconcile::NoKey;
            fn reconcile<R: autosurgeon::Reconciler>(
                &self,
                mut reconciler: R,
            ) -> Result<(), R::Error> {
                reconciler.str(self.as_str())
            }
        }
    };
}

document_enum! {
    /// What the mesh wants of a service.
    #[derive(Default)]
    pub enum Desired {
        /// Run it (where it is placed).
        #[default]
        Running = "running",
        /// Keep it, stopped.
        Stopped = "stopped",
        /// A tombstone: deletions must win over concurrent older writes, and epoch migration
        /// compares `updated_at_ms`.
        Removed = "removed",
    }
}

document_enum! {
    /// An operator request that is not a desired state.
    pub enum OperatorRequest {
        /// Start it, clearing `failed`.
        Start = "start",
        /// Stop it and start it again at once, forgetting past failures.
        Restart = "restart",
    }
}

document_enum! {
    /// The state a node publishes for one of its instances: the supervisor's service state, or
    /// `refused` (placed here, but this node will not run it).
    #[derive(Default)]
    pub enum InstanceState {
        #[default]
        Stopped = "stopped",
        Starting = "starting",
        Healthy = "healthy",
        Unhealthy = "unhealthy",
        Stopping = "stopping",
        Backoff = "backoff",
        Failed = "failed",
        Refused = "refused",
    }
}

/// A lease's state in the document: the allocator's [`LeaseState`], as `mesh ports` shows it.
impl Hydrate for LeaseState {
    fn hydrate_string(text: &'_ str) -> Result<Self, autosurgeon::HydrateError> {
        match text {
            "allocated" => Ok(LeaseState::Allocated),
            "in-use" => Ok(LeaseState::InUse),
            "released" => Ok(LeaseState::Released),
            other => Err(autosurgeon::HydrateError::unexpected(
                "allocated, in-use or released",
                other.to_string(),
            )),
        }
    }
}

/// For `LeaseRecord::default()`: a record built field by field starts released.
impl Default for LeaseState {
    fn default() -> Self {
        LeaseState::Released
    }
}

impl Reconcile for LeaseState {
    type Key<'a> = autosurgeon::reconcile::NoKey;
    fn reconcile<R: autosurgeon::Reconciler>(&self, mut reconciler: R) -> Result<(), R::Error> {
        reconciler.str(self.to_string())
    }
}
