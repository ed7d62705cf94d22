//! The common configuration structure (virtio 1.2 §4.1.4.3): feature
//! negotiation, device status, and each queue's configuration, as registers
//! in the device's BAR.
//!
//! The guest reads and writes these fields at their natural width, but a
//! 64-bit ring address may also arrive as two 32-bit halves (Linux writes it
//! that way). This module turns an access (offset, bytes) into a named
//! field, so the transport never decodes offsets itself; an access that
//! matches no field is ignored (writes) or reads zero.

/// Offsets of the fields, as the spec lays them out.
pub mod offset {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// The structure's length.
    pub const END: u64 = 0x38;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// A field of the common configuration, as one access names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    ConfigMsixVector,
    NumQueues,
    DeviceStatus,
    ConfigGeneration,
    QueueSelect,
    QueueSize,
    QueueMsixVector,
    QueueEnable,
    QueueNotifyOff,
    /// A queue ring address: which one, and which half (`None` for a
    /// whole 64-bit access).
    QueueAddress(Ring, Option<Half>),
}

/// The three areas of a split virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    /// The descriptor table.
    Descriptors,
    /// The driver area: the available ring.
    Driver,
    /// The device area: the used ring.
    Device,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    Low,
    High,
}

/// The field an access of `len` bytes at `offset` names, if any.
pub fn field(offset: u64, len: usize) -> Option<Field> {
    use offset::*;
    let field = match (offset, len) {
        (DEVICE_FEATURE_SELECT, 4) => Field::DeviceFeatureSelect,
        (DEVICE_FEATURE, 4) => Field::DeviceFeature,
        (DRIVER_FEATURE_SELECT, 4) => Field::DriverFeatureSelect,
        (DRIVER_FEATURE, 4) => Field::DriverFeature,
        (CONFIG_MSIX_VECTOR, 2) => Field::ConfigMsixVector,
        (NUM_QUEUES, 2) => Field::NumQueues,
        (DEVICE_STATUS, 1) => Field::DeviceStatus,
        (CONFIG_GENERATION, 1) => Field::ConfigGeneration,
        (QUEUE_SELECT, 2) => Field::QueueSelect,
        (QUEUE_SIZE, 2) => Field::QueueSize,
        (QUEUE_MSIX_VECTOR, 2) => Field::QueueMsixVector,
        (QUEUE_ENABLE, 2) => Field::QueueEnable,
        (QUEUE_NOTIFY_OFF, 2) => Field::QueueNotifyOff,
        (o, 8) => Field::QueueAddress(ring_at(o)?, None),
        (o, 4) if ring_at(o).is_some() => Field::QueueAddress(ring_at(o)?, Some(Half::Low)),
        (o, 4) if o >= 4 && ring_at(o - 4).is_some() => {
            Field::QueueAddress(ring_at(o - 4)?, Some(Half::High))
        }
        _ => return None,
    };
    Some(field)
}

fn ring_at(offset: u64) -> Option<Ring> {
    match offset {
        offset::QUEUE_DESC => Some(Ring::Descriptors),
        offset::QUEUE_DRIVER => Some(Ring::Driver),
        offset::QUEUE_DEVICE => Some(Ring::Device),
        _ => None,
    }
}

/// Replaces one half (or all) of a 64-bit address with `value`.
pub fn merge_address(old: u64, half: Option<Half>, value: u64) -> u64 {
    match half {
        None => value,
        Some(Half::Low) => (old & !0xffff_ffff) | (value & 0xffff_ffff),
        Some(Half::High) => (old & 0xffff_ffff) | (value << 32),
    }
}

/// Reads a little-endian value of up to 8 bytes.
pub fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .enumerate()
        .fold(0, |value, (i, byte)| value | (u64::from(*byte) << (8 * i)))
}

/// Writes `value` little-endian into all of `data` (up to 8 bytes).
pub fn put_le_value(data: &mut [u8], value: u64) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = if i < 8 { (value >> (8 * i)) as u8 } else { 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named_only_at_their_natural_width() {
        assert_eq!(field(0x14, 1), Some(Field::DeviceStatus));
        assert_eq!(field(0x14, 4), None);
        assert_eq!(field(0x16, 2), Some(Field::QueueSelect));
        assert_eq!(field(0x17, 1), None);
        assert_eq!(field(0x100, 4), None);
    }

    #[test]
    fn ring_addresses_take_whole_or_split_accesses() {
        assert_eq!(
            field(0x20, 8),
            Some(Field::QueueAddress(Ring::Descriptors, None))
        );
        assert_eq!(
            field(0x28, 4),
            Some(Field::QueueAddress(Ring::Driver, Some(Half::Low)))
        );
        assert_eq!(
            field(0x34, 4),
            Some(Field::QueueAddress(Ring::Device, Some(Half::High)))
        );
        let address = merge_address(0, Some(Half::Low), 0x1234_5000);
        let address = merge_address(address, Some(Half::High), 0x1);
        assert_eq!(address, 0x1_1234_5000);
    }

    #[test]
    fn little_endian_round_trip() {
        let mut bytes = [0u8; 4];
        put_le_value(&mut bytes, 0x1122_3344);
        assert_eq!(bytes, [0x44, 0x33, 0x22, 0x11]);
        assert_eq!(le_value(&bytes), 0x1122_3344);
        assert_eq!(le_value(&[]), 0);
    }
}
