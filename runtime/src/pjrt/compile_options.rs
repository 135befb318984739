//! `xla.CompileOptionsProto`, encoded with prost from the few fields xlac sets
//! (field numbers as in XLA's `compile_options.proto` at PJRT API 0.81).

use crate::workarounds::{OptionValue, Workaround};
use prost::Message;
use std::collections::BTreeMap;

#[derive(Clone, PartialEq, Message)]
struct CompileOptionsProto {
    #[prost(message, optional, tag = "3")]
    executable_build_options: Option<ExecutableBuildOptionsProto>,
    /// XLA debug options by name, set over the client's (XLA's defaults and
    /// `XLA_FLAGS`): PJRT applies them to the build options' debug options,
    /// which a partial `debug_options` message would replace whole.
    #[prost(btree_map = "string, message", tag = "7")]
    env_option_overrides: BTreeMap<String, OptionOverrideProto>,
}

/// `xla.OptionOverrideProto`: one option's value, a boolean or a string
/// (which XLA parses as the option's type, a repeated option's values
/// comma-separated).
#[derive(Clone, PartialEq, Message)]
struct OptionOverrideProto {
    #[prost(string, optional, tag = "1")]
    string_field: Option<String>,
    #[prost(bool, optional, tag = "2")]
    bool_field: Option<bool>,
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
    #[prost(message, optional, tag = "9")]
    device_assignment: Option<DeviceAssignmentProto>,
    #[prost(bool, tag = "19")]
    use_shardy_partitioner: bool,
}

/// `xla.DeviceAssignmentProto`: the device of each (replica, computation).
#[derive(Clone, PartialEq, Message)]
struct DeviceAssignmentProto {
    #[prost(int32, tag = "1")]
    replica_count: i32,
    #[prost(int32, tag = "2")]
    computation_count: i32,
    #[prost(message, repeated, tag = "3")]
    computation_devices: Vec<ComputationDevice>,
}

#[derive(Clone, PartialEq, Message)]
struct ComputationDevice {
    #[prost(int64, repeated, tag = "1")]
    replica_device_ids: Vec<i64>,
}

/// Options for compiling one program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Replicas (≥ 1).
    pub num_replicas: u32,
    /// SPMD partitions (≥ 1).
    pub num_partitions: u32,
    /// The devices it runs on, one per partition in partition order (indices
    /// into the client's devices); `None`: PJRT's default, the client's first.
    pub devices: Option<Vec<usize>>,
    /// XLA debug options for this program by name (as `XLA_FLAGS` spells
    /// them without `--`), over the process's: e.g.
    /// `xla_cpu_enable_concurrency_optimized_scheduler = false`. A name the
    /// plugin's XLA does not know fails the compile.
    pub xla_flags: BTreeMap<String, bool>,
    /// Whether some product of the program may read an operand XLA computes
    /// as a broadcast (true unless its lowering found none): a plugin
    /// defect's condition ([`crate::workarounds::for_program`]): true by default.
    pub products_read_broadcasts: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            num_replicas: 1,
            num_partitions: 1,
            devices: None,
            xla_flags: BTreeMap::new(),
            products_read_broadcasts: true,
        }
    }
}

impl CompileOptions {
    /// The workarounds this program gets on a plugin of PJRT API
    /// `api_version`: the plugin's known defects' options
    /// ([`crate::workarounds::for_plugin_api`]) that its products' reading of
    /// broadcasts calls for. What compiles it and what keys its cache entry
    /// both ask here, so the key names exactly the options compiled with.
    pub(crate) fn workarounds(&self, api_version: (i32, i32)) -> Vec<Workaround> {
        crate::workarounds::for_program(crate::workarounds::for_plugin_api(api_version), self.products_read_broadcasts)
    }

    /// The serialized proto, the devices (if any) by their indices. Replica and
    /// partition counts are always written and at least 1: XLA aborts the process on 0.
    pub fn encode(&self) -> Vec<u8> {
        let indices: Option<Vec<i64>> = self.devices.as_ref().map(|d| d.iter().map(|&i| i as i64).collect());
        self.encode_placed(indices.as_deref(), &[])
    }

    /// The serialized proto with the devices, if any, given by their PJRT ids
    /// (what a device assignment names), one per partition, and the plugin's
    /// workarounds' options.
    pub(crate) fn encode_placed(&self, device_ids: Option<&[i64]>, workarounds: &[Workaround]) -> Vec<u8> {
        let partitions = self.num_partitions.max(1) as i64;
        let device_assignment = device_ids.map(|ids| DeviceAssignmentProto {
            replica_count: 1,
            computation_count: ids.len() as i32,
            computation_devices: ids.iter().map(|&id| ComputationDevice { replica_device_ids: vec![id] }).collect(),
        });
        CompileOptionsProto {
            executable_build_options: Some(ExecutableBuildOptionsProto {
                device_ordinal: -1,
                num_replicas: self.num_replicas.max(1) as i64,
                num_partitions: partitions,
                use_spmd_partitioning: partitions > 1,
                use_shardy_partitioner: partitions > 1,
                device_assignment,
            }),
            env_option_overrides: (self.xla_flags.iter())
                .map(|(name, &value)| {
                    (name.clone(), OptionOverrideProto { bool_field: Some(value), string_field: None })
                })
                .chain(workarounds.iter().map(|w| {
                    let value = match w.value {
                        OptionValue::Text(t) => OptionOverrideProto { string_field: Some(t.into()), bool_field: None },
                        OptionValue::Bool(b) => OptionOverrideProto { string_field: None, bool_field: Some(b) },
                    };
                    (w.option.to_string(), value)
                }))
                .collect(),
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_never_zero() {
        let bytes = CompileOptions { num_replicas: 0, num_partitions: 0, ..CompileOptions::default() }.encode();
        let decoded = CompileOptionsProto::decode(&bytes[..]).unwrap();
        let b = decoded.executable_build_options.unwrap();
        assert_eq!((b.num_replicas, b.num_partitions, b.device_ordinal), (1, 1, -1));
        assert_eq!(b.device_assignment, None);
    }

    #[test]
    fn a_placed_program_is_assigned_its_device() {
        let bytes = CompileOptions::default().encode_placed(Some(&[3]), &[]);
        let b = CompileOptionsProto::decode(&bytes[..]).unwrap().executable_build_options.unwrap();
        let a = b.device_assignment.unwrap();
        assert_eq!((a.replica_count, a.computation_count), (1, 1));
        assert_eq!(a.computation_devices[0].replica_device_ids, [3]);
    }

    #[test]
    fn a_placed_partitioned_program_is_assigned_a_device_per_partition() {
        let options = CompileOptions { num_partitions: 2, ..CompileOptions::default() };
        let bytes = options.encode_placed(Some(&[2, 3]), &[]);
        let b = CompileOptionsProto::decode(&bytes[..]).unwrap().executable_build_options.unwrap();
        let a = b.device_assignment.unwrap();
        assert_eq!((a.replica_count, a.computation_count, b.num_partitions), (1, 2, 2));
        let ids: Vec<&[i64]> = a.computation_devices.iter().map(|c| &c.replica_device_ids[..]).collect();
        assert_eq!(ids, [[2], [3]]);
    }

    #[test]
    fn xla_flags_are_option_overrides() {
        let flag = "xla_cpu_enable_concurrency_optimized_scheduler".to_string();
        let options =
            CompileOptions { xla_flags: BTreeMap::from([(flag.clone(), false)]), ..CompileOptions::default() };
        let decoded = CompileOptionsProto::decode(&options.encode()[..]).unwrap();
        assert_eq!(decoded.env_option_overrides[&flag].bool_field, Some(false));
        let plain = CompileOptionsProto::decode(&CompileOptions::default().encode()[..]).unwrap();
        assert!(plain.env_option_overrides.is_empty());
    }

    const FLAG: Workaround = Workaround {
        option: "xla_cpu_use_xnnpack",
        value: OptionValue::Bool(false),
        reason: "",
        only_if_products_read_broadcasts: false,
    };

    #[test]
    fn workarounds_are_overrides_of_their_type() {
        let text =
            Workaround { option: "xla_cpu_experimental_ynn_fusion_type", value: OptionValue::Text("A,B"), ..FLAG };
        let flag = FLAG;
        let bytes = CompileOptions::default().encode_placed(None, &[text, flag]);
        let decoded = CompileOptionsProto::decode(&bytes[..]).unwrap();
        let o = &decoded.env_option_overrides[text.option];
        assert_eq!((o.string_field.as_deref(), o.bool_field), (Some("A,B"), None));
        let o = &decoded.env_option_overrides[flag.option];
        assert_eq!((o.string_field.as_deref(), o.bool_field), (None, Some(false)));
    }
}
