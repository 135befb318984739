//! `xla.CompileOptionsProto`, encoded with prost from the few fields xlac sets
//! (field numbers as in XLA's `compile_options.proto` at PJRT API 0.81).

use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct CompileOptionsProto {
    #[prost(message, optional, tag = "3")]
    executable_build_options: Option<ExecutableBuildOptionsProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ExecutableBuildOptionsProto {
    #[prost(int64, tag = "1")]
    device_ordinal: i64,
    #[prost(int64, tag = "4")]
    num_replicas: i64,
    #[prost(int64, tag = "5")]
    num_partitions: i64,
    #[prost(bool, tag = "6")]
    use_spmd_partitioning: bool,
    #[prost(bool, tag = "19")]
    use_shardy_partitioner: bool,
}

/// Options for compiling one program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Replicas (≥ 1).
    pub num_replicas: u32,
    /// SPMD partitions (≥ 1).
    pub num_partitions: u32,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions { num_replicas: 1, num_partitions: 1 }
    }
}

impl CompileOptions {
    /// The serialized proto. Replica and partition counts are always written
    /// and at least 1: XLA aborts the process on 0.
    pub fn encode(&self) -> Vec<u8> {
        let partitions = self.num_partitions.max(1) as i64;
        CompileOptionsProto {
            executable_build_options: Some(ExecutableBuildOptionsProto {
                device_ordinal: -1,
                num_replicas: self.num_replicas.max(1) as i64,
                num_partitions: partitions,
                use_spmd_partitioning: partitions > 1,
                use_shardy_partitioner: partitions > 1,
            }),
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_never_zero() {
        let bytes = CompileOptions { num_replicas: 0, num_partitions: 0 }.encode();
        let decoded = CompileOptionsProto::decode(&bytes[..]).unwrap();
        let b = decoded.executable_build_options.unwrap();
        assert_eq!((b.num_replicas, b.num_partitions, b.device_ordinal), (1, 1, -1));
    }
}
