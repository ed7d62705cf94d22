//! What the user asked for on the command line: `--block PATH[,ro][,direct]`.
//!
//! The value is split at commas: the first piece is the path, each other
//! piece an option, in any order (repeating one is harmless):
//!
//! - `ro`: the guest sees a read-only disk (VIRTIO_BLK_F_RO); lg opens the
//!   file read-only, so a file lg may not write can still be served.
//! - `direct`: lg opens the file with `O_DIRECT`, bypassing the host's page
//!   cache, so the guest's cache is the only one (and a benchmark in the
//!   guest measures the disk, not host RAM).
//!
//! A path that contains a comma cannot be given: there is no escape. That
//! is rare enough in disk image names that a symlink is the answer, and it
//! keeps `disk.img,ro` meaning exactly one thing.

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::BlockConfigError;

/// One `--block` option: which file or device, and how to open it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The backing file or host block device.
    pub path: PathBuf,
    /// Serve the disk read-only.
    pub read_only: bool,
    /// Open with `O_DIRECT`, bypassing the host page cache.
    pub direct: bool,
}

impl FromStr for BlockConfig {
    type Err = BlockConfigError;

    /// Parses `PATH`, `PATH,ro`, `PATH,direct` or `PATH,ro,direct`.
    fn from_str(value: &str) -> Result<BlockConfig, BlockConfigError> {
        let mut pieces = value.split(',');
        // `split` always yields at least one piece.
        let path = pieces.next().unwrap_or("");
        if path.is_empty() {
            return Err(BlockConfigError::EmptyPath {
                value: value.to_owned(),
            });
        }
        let mut config = BlockConfig {
            path: PathBuf::from(path),
            read_only: false,
            direct: false,
        };
        for option in pieces {
            match option {
                "ro" => config.read_only = true,
                "direct" => config.direct = true,
                "" => {
                    return Err(BlockConfigError::EmptyOption {
                        value: value.to_owned(),
                    })
                }
                other => {
                    return Err(BlockConfigError::UnknownOption {
                        option: other.to_owned(),
                        value: value.to_owned(),
                    })
                }
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<BlockConfig, BlockConfigError> {
        value.parse()
    }

    #[test]
    fn a_plain_path_is_a_writable_cached_disk() {
        assert_eq!(
            parse("/var/lib/lg/root.img").unwrap(),
            BlockConfig {
                path: "/var/lib/lg/root.img".into(),
                read_only: false,
                direct: false,
            }
        );
    }

    #[test]
    fn options_come_after_the_path_in_any_order() {
        let ro = parse("disk.img,ro").unwrap();
        assert!(ro.read_only && !ro.direct);
        let direct = parse("disk.img,direct").unwrap();
        assert!(!direct.read_only && direct.direct);
        for value in [
            "disk.img,ro,direct",
            "disk.img,direct,ro",
            "disk.img,ro,ro,direct",
        ] {
            let both = parse(value).unwrap();
            assert_eq!(both.path, PathBuf::from("disk.img"));
            assert!(both.read_only && both.direct, "{value}");
        }
    }

    #[test]
    fn an_unknown_option_is_named() {
        let e = parse("disk.img,ro,cache=none").unwrap_err();
        assert!(
            matches!(&e, BlockConfigError::UnknownOption { option, .. } if option == "cache=none")
        );
        let message = e.to_string();
        assert!(message.contains("\"cache=none\""), "{message}");
        assert!(
            message.contains("ro") && message.contains("direct"),
            "{message}"
        );
    }

    #[test]
    fn an_empty_path_or_option_is_refused() {
        for value in ["", ",ro", ","] {
            assert!(
                matches!(parse(value), Err(BlockConfigError::EmptyPath { .. })),
                "{value:?}"
            );
        }
        assert!(matches!(
            parse("disk.img,,ro"),
            Err(BlockConfigError::EmptyOption { .. })
        ));
        assert!(matches!(
            parse("disk.img,"),
            Err(BlockConfigError::EmptyOption { .. })
        ));
        assert!(parse("").unwrap_err().to_string().contains("no path"));
    }
}
