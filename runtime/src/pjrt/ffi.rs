//! Hand-written declarations of the parts of the PJRT C API that xlac uses, at
//! the layout of API version 0.81 (`pjrt_c_api.h` as shipped in the
//! `xla-cpu-pjrt` wheel). Table slots xlac does not call are opaque pointers.
//!
//! Every `*_Args` struct starts with `struct_size`, which must be the header's
//! `PJRT_STRUCT_SIZE`: the offset of the last field plus its size (not
//! `size_of`, which may include trailing padding). [`args!`] computes it so.
#![allow(non_camel_case_types, non_snake_case, dead_code)]

use std::ffi::{c_char, c_int, c_void};

/// The API version these declarations follow.
pub const API_MAJOR: i32 = 0;
pub const API_MINOR: i32 = 81;

macro_rules! opaque {
    ($($name:ident),*) => {$(
        #[repr(C)]
        pub struct $name { _private: [u8; 0] }
    )*};
}
opaque!(
    PJRT_Error,
    PJRT_Client,
    PJRT_Device,
    PJRT_DeviceDescription,
    PJRT_Event,
    PJRT_Buffer,
    PJRT_LoadedExecutable,
    PJRT_Executable,
    PJRT_Extension_Base,
    PJRT_SerializedExecutable
);

/// The size of a field's type, from a projection closure (used by [`args!`]).
pub fn field_size<S, F>(_: impl std::ops::Fn(&S) -> &F) -> usize {
    std::mem::size_of::<F>()
}

/// Declares a `#[repr(C)]` args struct whose first two fields are
/// `struct_size` and `extension_start`, with `new()` returning it zeroed and
/// `struct_size` set to the header's size for the named last field.
macro_rules! args {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? } last = $last:ident) => {
        #[repr(C)]
        pub struct $name {
            pub struct_size: usize,
            pub extension_start: *mut PJRT_Extension_Base,
            $(pub $field: $ty),*
        }
        impl $name {
            /// The header's `PJRT_STRUCT_SIZE` for this struct.
            pub fn struct_size() -> usize {
                std::mem::offset_of!($name, $last) + field_size(|s: &$name| &s.$last)
            }
            /// A zeroed struct with `struct_size` set.
            pub fn new() -> Self {
                // SAFETY: every field is an integer, a raw pointer or an
                // `Option` of a function pointer, for all of which zero is valid.
                let mut s: Self = unsafe { std::mem::zeroed() };
                s.struct_size = Self::struct_size();
                s
            }
        }
    };
}

pub type PJRT_Error_Code = c_int;
pub type PJRT_Buffer_Type = c_int;
pub type PJRT_NamedValue_Type = c_int;

pub const NAMED_STRING: PJRT_NamedValue_Type = 0;
pub const NAMED_INT64: PJRT_NamedValue_Type = 1;
pub const NAMED_INT64_LIST: PJRT_NamedValue_Type = 2;
pub const NAMED_FLOAT: PJRT_NamedValue_Type = 3;
pub const NAMED_BOOL: PJRT_NamedValue_Type = 4;

/// `PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes`.
pub const HOST_BUFFER_IMMUTABLE_UNTIL_TRANSFER_COMPLETES: c_int = 1;
/// `PJRT_HostBufferSemantics_kImmutableZeroCopy`: the buffer may use the host
/// memory in place for its whole life; `done_with_host_buffer` fires once the
/// plugin no longer reads it.
pub const HOST_BUFFER_IMMUTABLE_ZERO_COPY: c_int = 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub union NamedValueUnion {
    pub string_value: *const c_char,
    pub int64_value: i64,
    pub int64_array_value: *const i64,
    pub float_value: f32,
    pub bool_value: bool,
}

args!(PJRT_NamedValue {
    name: *const c_char,
    name_size: usize,
    type_: PJRT_NamedValue_Type,
    value: NamedValueUnion,
    value_size: usize,
} last = value_size);

args!(PJRT_Api_Version { major_version: c_int, minor_version: c_int } last = minor_version);

args!(PJRT_Error_Destroy_Args { error: *mut PJRT_Error } last = error);
args!(PJRT_Error_Message_Args { error: *const PJRT_Error, message: *const c_char, message_size: usize } last = message_size);
args!(PJRT_Error_GetCode_Args { error: *const PJRT_Error, code: PJRT_Error_Code } last = code);
args!(PJRT_Plugin_Initialize_Args {} last = extension_start);
args!(PJRT_Plugin_Attributes_Args { attributes: *const PJRT_NamedValue, num_attributes: usize } last = num_attributes);
args!(PJRT_Event_Destroy_Args { event: *mut PJRT_Event } last = event);
args!(PJRT_Event_Await_Args { event: *mut PJRT_Event } last = event);

args!(PJRT_Client_Create_Args {
    create_options: *const PJRT_NamedValue,
    num_options: usize,
    kv_get_callback: *const c_void,
    kv_get_user_arg: *mut c_void,
    kv_put_callback: *const c_void,
    kv_put_user_arg: *mut c_void,
    client: *mut PJRT_Client,
    kv_try_get_callback: *const c_void,
    kv_try_get_user_arg: *mut c_void,
} last = kv_try_get_user_arg);
args!(PJRT_Client_Destroy_Args { client: *mut PJRT_Client } last = client);
args!(PJRT_Client_PlatformName_Args { client: *mut PJRT_Client, platform_name: *const c_char, platform_name_size: usize } last = platform_name_size);
args!(PJRT_Client_PlatformVersion_Args { client: *mut PJRT_Client, platform_version: *const c_char, platform_version_size: usize } last = platform_version_size);
args!(PJRT_Client_AddressableDevices_Args {
    client: *mut PJRT_Client,
    addressable_devices: *const *mut PJRT_Device,
    num_addressable_devices: usize,
} last = num_addressable_devices);

args!(PJRT_Program { code: *mut c_char, code_size: usize, format: *const c_char, format_size: usize } last = format_size);
args!(PJRT_Client_Compile_Args {
    client: *mut PJRT_Client,
    program: *const PJRT_Program,
    compile_options: *const c_char,
    compile_options_size: usize,
    executable: *mut PJRT_LoadedExecutable,
} last = executable);

args!(PJRT_Client_BufferFromHostBuffer_Args {
    client: *mut PJRT_Client,
    data: *const c_void,
    type_: PJRT_Buffer_Type,
    dims: *const i64,
    num_dims: usize,
    byte_strides: *const i64,
    num_byte_strides: usize,
    host_buffer_semantics: c_int,
    device: *mut PJRT_Device,
    memory: *mut c_void,
    device_layout: *mut c_void,
    done_with_host_buffer: *mut PJRT_Event,
    buffer: *mut PJRT_Buffer,
} last = buffer);

args!(PJRT_DeviceDescription_Id_Args { device_description: *mut PJRT_DeviceDescription, id: c_int } last = id);
args!(PJRT_DeviceDescription_Kind_Args {
    device_description: *mut PJRT_DeviceDescription,
    device_kind: *const c_char,
    device_kind_size: usize,
} last = device_kind_size);
args!(PJRT_DeviceDescription_ToString_Args {
    device_description: *mut PJRT_DeviceDescription,
    to_string: *const c_char,
    to_string_size: usize,
} last = to_string_size);
args!(PJRT_Device_GetDescription_Args { device: *mut PJRT_Device, device_description: *mut PJRT_DeviceDescription } last = device_description);

args!(PJRT_Executable_Destroy_Args { executable: *mut PJRT_Executable } last = executable);
args!(PJRT_Executable_NumOutputs_Args { executable: *mut PJRT_Executable, num_outputs: usize } last = num_outputs);
args!(PJRT_Executable_Serialize_Args {
    executable: *const PJRT_Executable,
    serialized_bytes: *const c_char,
    serialized_bytes_size: usize,
    serialized_executable: *mut PJRT_SerializedExecutable,
    serialized_executable_deleter: Option<unsafe extern "C" fn(*mut PJRT_SerializedExecutable)>,
} last = serialized_executable_deleter);
args!(PJRT_Executable_DeserializeAndLoad_Args {
    client: *mut PJRT_Client,
    serialized_executable: *const c_char,
    serialized_executable_size: usize,
    loaded_executable: *mut PJRT_LoadedExecutable,
    overridden_serialized_compile_options: *const c_char,
    overridden_serialized_compile_options_size: usize,
} last = overridden_serialized_compile_options_size);
args!(PJRT_Executable_GetCostAnalysis_Args {
    executable: *mut PJRT_Executable,
    num_properties: usize,
    properties: *const PJRT_NamedValue,
} last = properties);
args!(PJRT_Executable_GetCompiledMemoryStats_Args {
    executable: *mut PJRT_Executable,
    generated_code_size_in_bytes: i64,
    argument_size_in_bytes: i64,
    output_size_in_bytes: i64,
    alias_size_in_bytes: i64,
    temp_size_in_bytes: i64,
    host_generated_code_size_in_bytes: i64,
    host_argument_size_in_bytes: i64,
    host_output_size_in_bytes: i64,
    host_alias_size_in_bytes: i64,
    host_temp_size_in_bytes: i64,
    peak_memory_in_bytes: i64,
} last = peak_memory_in_bytes);
args!(PJRT_LoadedExecutable_Destroy_Args { executable: *mut PJRT_LoadedExecutable } last = executable);
args!(PJRT_LoadedExecutable_GetExecutable_Args { loaded_executable: *mut PJRT_LoadedExecutable, executable: *mut PJRT_Executable } last = executable);
args!(PJRT_LoadedExecutable_AddressableDevices_Args {
    executable: *mut PJRT_LoadedExecutable,
    addressable_devices: *const *mut PJRT_Device,
    num_addressable_devices: usize,
} last = num_addressable_devices);

args!(PJRT_ExecuteOptions {
    send_callbacks: *mut c_void,
    recv_callbacks: *mut c_void,
    num_send_ops: usize,
    num_recv_ops: usize,
    launch_id: c_int,
    non_donatable_input_indices: *const i64,
    num_non_donatable_input_indices: usize,
    context: *mut c_void,
    call_location: *const c_char,
    num_tasks: usize,
    task_ids: *mut c_int,
    incarnation_ids: *mut i64,
} last = incarnation_ids);
args!(PJRT_LoadedExecutable_Execute_Args {
    executable: *mut PJRT_LoadedExecutable,
    options: *mut PJRT_ExecuteOptions,
    argument_lists: *const *const *mut PJRT_Buffer,
    num_devices: usize,
    num_args: usize,
    output_lists: *const *mut *mut PJRT_Buffer,
    device_complete_events: *mut *mut PJRT_Event,
    execute_device: *mut PJRT_Device,
} last = execute_device);

args!(PJRT_Buffer_Destroy_Args { buffer: *mut PJRT_Buffer } last = buffer);
args!(PJRT_Buffer_ElementType_Args { buffer: *mut PJRT_Buffer, type_: PJRT_Buffer_Type } last = type_);
args!(PJRT_Buffer_Dimensions_Args { buffer: *mut PJRT_Buffer, dims: *const i64, num_dims: usize } last = num_dims);
args!(PJRT_Buffer_ToHostBuffer_Args {
    src: *mut PJRT_Buffer,
    host_layout: *mut c_void,
    dst: *mut c_void,
    dst_size: usize,
    event: *mut PJRT_Event,
} last = event);
args!(PJRT_Buffer_ReadyEvent_Args { buffer: *mut PJRT_Buffer, event: *mut PJRT_Event } last = event);
args!(PJRT_Buffer_UnsafePointer_Args { buffer: *mut PJRT_Buffer, buffer_pointer: usize } last = buffer_pointer);
args!(PJRT_Buffer_CopyToDevice_Args {
    buffer: *mut PJRT_Buffer,
    dst_device: *mut PJRT_Device,
    dst_buffer: *mut PJRT_Buffer,
} last = dst_buffer);

/// A PJRT function taking one args struct and returning an error or null.
pub type Fn<A> = Option<unsafe extern "C" fn(*mut A) -> *mut PJRT_Error>;
/// A table slot xlac does not call.
pub type Unused = *const c_void;

/// The `PJRT_Api` table, up to the last function xlac calls
/// (`PJRT_Executable_GetCompiledMemoryStats`). A plugin's `struct_size` must cover it.
#[repr(C)]
pub struct PJRT_Api {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub pjrt_api_version: PJRT_Api_Version,
    pub PJRT_Error_Destroy: Option<unsafe extern "C" fn(*mut PJRT_Error_Destroy_Args)>,
    pub PJRT_Error_Message: Option<unsafe extern "C" fn(*mut PJRT_Error_Message_Args)>,
    pub PJRT_Error_GetCode: Fn<PJRT_Error_GetCode_Args>,
    pub PJRT_Plugin_Initialize: Fn<PJRT_Plugin_Initialize_Args>,
    pub PJRT_Plugin_Attributes: Fn<PJRT_Plugin_Attributes_Args>,
    pub PJRT_Event_Destroy: Fn<PJRT_Event_Destroy_Args>,
    pub PJRT_Event_IsReady: Unused,
    pub PJRT_Event_Error: Unused,
    pub PJRT_Event_Await: Fn<PJRT_Event_Await_Args>,
    pub PJRT_Event_OnReady: Unused,
    pub PJRT_Client_Create: Fn<PJRT_Client_Create_Args>,
    pub PJRT_Client_Destroy: Fn<PJRT_Client_Destroy_Args>,
    pub PJRT_Client_PlatformName: Fn<PJRT_Client_PlatformName_Args>,
    pub PJRT_Client_ProcessIndex: Unused,
    pub PJRT_Client_PlatformVersion: Fn<PJRT_Client_PlatformVersion_Args>,
    pub PJRT_Client_Devices: Unused,
    pub PJRT_Client_AddressableDevices: Fn<PJRT_Client_AddressableDevices_Args>,
    pub PJRT_Client_LookupDevice: Unused,
    pub PJRT_Client_LookupAddressableDevice: Unused,
    pub PJRT_Client_AddressableMemories: Unused,
    pub PJRT_Client_Compile: Fn<PJRT_Client_Compile_Args>,
    pub PJRT_Client_DefaultDeviceAssignment: Unused,
    pub PJRT_Client_BufferFromHostBuffer: Fn<PJRT_Client_BufferFromHostBuffer_Args>,
    pub PJRT_DeviceDescription_Id: Fn<PJRT_DeviceDescription_Id_Args>,
    pub PJRT_DeviceDescription_ProcessIndex: Unused,
    pub PJRT_DeviceDescription_Attributes: Unused,
    pub PJRT_DeviceDescription_Kind: Fn<PJRT_DeviceDescription_Kind_Args>,
    pub PJRT_DeviceDescription_DebugString: Unused,
    pub PJRT_DeviceDescription_ToString: Fn<PJRT_DeviceDescription_ToString_Args>,
    pub PJRT_Device_GetDescription: Fn<PJRT_Device_GetDescription_Args>,
    pub PJRT_Device_IsAddressable: Unused,
    pub PJRT_Device_LocalHardwareId: Unused,
    pub PJRT_Device_AddressableMemories: Unused,
    pub PJRT_Device_DefaultMemory: Unused,
    pub PJRT_Device_MemoryStats: Unused,
    pub PJRT_Memory_Id: Unused,
    pub PJRT_Memory_Kind: Unused,
    pub PJRT_Memory_DebugString: Unused,
    pub PJRT_Memory_ToString: Unused,
    pub PJRT_Memory_AddressableByDevices: Unused,
    pub PJRT_Executable_Destroy: Fn<PJRT_Executable_Destroy_Args>,
    pub PJRT_Executable_Name: Unused,
    pub PJRT_Executable_NumReplicas: Unused,
    pub PJRT_Executable_NumPartitions: Unused,
    pub PJRT_Executable_NumOutputs: Fn<PJRT_Executable_NumOutputs_Args>,
    pub PJRT_Executable_SizeOfGeneratedCodeInBytes: Unused,
    pub PJRT_Executable_GetCostAnalysis: Fn<PJRT_Executable_GetCostAnalysis_Args>,
    pub PJRT_Executable_OutputMemoryKinds: Unused,
    pub PJRT_Executable_OptimizedProgram: Unused,
    pub PJRT_Executable_Serialize: Fn<PJRT_Executable_Serialize_Args>,
    pub PJRT_LoadedExecutable_Destroy: Fn<PJRT_LoadedExecutable_Destroy_Args>,
    pub PJRT_LoadedExecutable_GetExecutable: Fn<PJRT_LoadedExecutable_GetExecutable_Args>,
    pub PJRT_LoadedExecutable_AddressableDevices: Fn<PJRT_LoadedExecutable_AddressableDevices_Args>,
    pub PJRT_LoadedExecutable_Delete: Unused,
    pub PJRT_LoadedExecutable_IsDeleted: Unused,
    pub PJRT_LoadedExecutable_Execute: Fn<PJRT_LoadedExecutable_Execute_Args>,
    pub PJRT_Executable_DeserializeAndLoad: Fn<PJRT_Executable_DeserializeAndLoad_Args>,
    pub PJRT_LoadedExecutable_Fingerprint: Unused,
    pub PJRT_Buffer_Destroy: Fn<PJRT_Buffer_Destroy_Args>,
    pub PJRT_Buffer_ElementType: Fn<PJRT_Buffer_ElementType_Args>,
    pub PJRT_Buffer_Dimensions: Fn<PJRT_Buffer_Dimensions_Args>,
    pub PJRT_Buffer_UnpaddedDimensions: Unused,
    pub PJRT_Buffer_DynamicDimensionIndices: Unused,
    pub PJRT_Buffer_GetMemoryLayout: Unused,
    pub PJRT_Buffer_OnDeviceSizeInBytes: Unused,
    pub PJRT_Buffer_Device: Unused,
    pub PJRT_Buffer_Memory: Unused,
    pub PJRT_Buffer_Delete: Unused,
    pub PJRT_Buffer_IsDeleted: Unused,
    pub PJRT_Buffer_CopyToDevice: Fn<PJRT_Buffer_CopyToDevice_Args>,
    pub PJRT_Buffer_ToHostBuffer: Fn<PJRT_Buffer_ToHostBuffer_Args>,
    pub PJRT_Buffer_IsOnCpu: Unused,
    pub PJRT_Buffer_ReadyEvent: Fn<PJRT_Buffer_ReadyEvent_Args>,
    pub PJRT_Buffer_UnsafePointer: Fn<PJRT_Buffer_UnsafePointer_Args>,
    pub PJRT_Buffer_IncreaseExternalReferenceCount: Unused,
    pub PJRT_Buffer_DecreaseExternalReferenceCount: Unused,
    pub PJRT_Buffer_OpaqueDeviceMemoryDataPointer: Unused,
    pub PJRT_CopyToDeviceStream_Destroy: Unused,
    pub PJRT_CopyToDeviceStream_AddChunk: Unused,
    pub PJRT_CopyToDeviceStream_TotalBytes: Unused,
    pub PJRT_CopyToDeviceStream_GranuleSize: Unused,
    pub PJRT_CopyToDeviceStream_CurrentBytes: Unused,
    pub PJRT_TopologyDescription_Create: Unused,
    pub PJRT_TopologyDescription_Destroy: Unused,
    pub PJRT_TopologyDescription_PlatformName: Unused,
    pub PJRT_TopologyDescription_PlatformVersion: Unused,
    pub PJRT_TopologyDescription_GetDeviceDescriptions: Unused,
    pub PJRT_TopologyDescription_Serialize: Unused,
    pub PJRT_TopologyDescription_Attributes: Unused,
    pub PJRT_Compile: Unused,
    pub PJRT_Executable_OutputElementTypes: Unused,
    pub PJRT_Executable_OutputDimensions: Unused,
    pub PJRT_Buffer_CopyToMemory: Unused,
    pub PJRT_Client_CreateViewOfDeviceBuffer: Unused,
    pub PJRT_Executable_Fingerprint: Unused,
    pub PJRT_Client_TopologyDescription: Unused,
    pub PJRT_Executable_GetCompiledMemoryStats: Fn<PJRT_Executable_GetCompiledMemoryStats_Args>,
}

/// The size of the table prefix xlac reads; the plugin's `struct_size` must be at least this.
pub fn api_prefix_size() -> usize {
    std::mem::size_of::<PJRT_Api>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes from the 0.81 header, where the C compiler computes them; a wrong
    /// field here would make the plugin reject the struct.
    #[test]
    fn struct_sizes_match_the_header() {
        assert_eq!(PJRT_Client_Create_Args::struct_size(), 88);
        assert_eq!(PJRT_NamedValue::struct_size(), 56);
        assert_eq!(PJRT_Api_Version::struct_size(), 24);
        assert_eq!(PJRT_Plugin_Initialize_Args::struct_size(), 16);
        assert_eq!(PJRT_Client_BufferFromHostBuffer_Args::struct_size(), 120);
        assert_eq!(PJRT_LoadedExecutable_Execute_Args::struct_size(), 80);
        assert_eq!(PJRT_ExecuteOptions::struct_size(), 112);
        assert_eq!(PJRT_Error_GetCode_Args::struct_size(), 28);
        assert_eq!(PJRT_Buffer_ToHostBuffer_Args::struct_size(), 56);
        assert_eq!(PJRT_Client_Compile_Args::struct_size(), 56);
        assert_eq!(PJRT_Program::struct_size(), 48);
        assert_eq!(PJRT_Error_Message_Args::struct_size(), 40);
        assert_eq!(PJRT_DeviceDescription_Kind_Args::struct_size(), 40);
        assert_eq!(PJRT_Buffer_Dimensions_Args::struct_size(), 40);
        assert_eq!(PJRT_Buffer_CopyToDevice_Args::struct_size(), 40);
        assert_eq!(PJRT_Buffer_UnsafePointer_Args::struct_size(), 32);
        assert_eq!(PJRT_Buffer_ElementType_Args::struct_size(), 28);
        assert_eq!(PJRT_Executable_NumOutputs_Args::struct_size(), 32);
        assert_eq!(PJRT_LoadedExecutable_AddressableDevices_Args::struct_size(), 40);
        assert_eq!(PJRT_Executable_Serialize_Args::struct_size(), 56);
        assert_eq!(PJRT_Executable_DeserializeAndLoad_Args::struct_size(), 64);
        assert_eq!(std::mem::offset_of!(PJRT_Api, PJRT_Error_Destroy), 40);
        assert_eq!(std::mem::offset_of!(PJRT_Api, PJRT_LoadedExecutable_Execute), 480);
        assert_eq!(std::mem::offset_of!(PJRT_Api, PJRT_Buffer_ToHostBuffer), 600);
        assert_eq!(std::mem::offset_of!(PJRT_Api, PJRT_Buffer_ReadyEvent), 616);
        assert_eq!(std::mem::offset_of!(PJRT_Api, PJRT_Executable_GetCostAnalysis), 408);
        assert_eq!(std::mem::offset_of!(PJRT_Api, PJRT_Executable_GetCompiledMemoryStats), 808);
        assert_eq!(PJRT_Executable_GetCostAnalysis_Args::struct_size(), 40);
        assert_eq!(PJRT_Executable_GetCompiledMemoryStats_Args::struct_size(), 112);
        assert_eq!(api_prefix_size(), 816);
    }
}
