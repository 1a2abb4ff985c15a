//! What kind of executable a file is: its magic, and for ELF the class, byte
//! order and machine, so a binary for another CPU is refused before it is
//! ever run. Reads only the first bytes it is handed; runs nothing.

/// How many leading bytes [`identify`] needs.
pub const HEADER_LEN: usize = 20;

/// A file's executable format, as far as the first [`HEADER_LEN`] bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Elf(Elf),
    MachO,
    Pe,
}

/// The parts of an ELF header that decide where it can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elf {
    /// `EI_CLASS`: 1 32-bit, 2 64-bit.
    pub class: u8,
    /// `EI_DATA`: 1 little-endian, 2 big-endian.
    pub data: u8,
    /// `e_machine`, in the file's byte order.
    pub machine: u16,
}

pub const EM_386: u16 = 3;
pub const EM_ARM: u16 = 40;
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;

/// The release channel's target names (the stock agent's arch strings), and
/// the ELF each one must be.
pub const TARGETS: &[(&str, Elf)] = &[
    (
        "linux-amd64",
        Elf {
            class: 2,
            data: 1,
            machine: EM_X86_64,
        },
    ),
    (
        "linux-arm64",
        Elf {
            class: 2,
            data: 1,
            machine: EM_AARCH64,
        },
    ),
    (
        "linux-armv7",
        Elf {
            class: 1,
            data: 1,
            machine: EM_ARM,
        },
    ),
    (
        "linux-armv6",
        Elf {
            class: 1,
            data: 1,
            machine: EM_ARM,
        },
    ),
    (
        "linux-386",
        Elf {
            class: 1,
            data: 1,
            machine: EM_386,
        },
    ),
];

/// The magic numbers the updater accepts (the stock updater's list): ELF;
/// Mach-O 64-bit, 32-bit and universal as they appear on disk; PE (`MZ`).
pub fn identify(header: &[u8]) -> Option<Kind> {
    match header {
        [0x7f, b'E', b'L', b'F', rest @ ..] if rest.len() >= HEADER_LEN - 4 => {
            let (class, data) = (rest[0], rest[1]);
            let m = [rest[14], rest[15]];
            let machine = match data {
                1 => u16::from_le_bytes(m),
                2 => u16::from_be_bytes(m),
                _ => return None,
            };
            matches!(class, 1 | 2).then_some(Kind::Elf(Elf {
                class,
                data,
                machine,
            }))
        }
        [0xcf, 0xfa, 0xed, 0xfe, ..]
        | [0xce, 0xfa, 0xed, 0xfe, ..]
        | [0xca, 0xfe, 0xba, 0xbe, ..] => Some(Kind::MachO),
        [b'M', b'Z', _, _, ..] => Some(Kind::Pe),
        _ => None,
    }
}

/// The ELF this build is: what a replacement must be to run here.
pub fn running() -> Elf {
    let class = if cfg!(target_pointer_width = "64") {
        2
    } else {
        1
    };
    let data = if cfg!(target_endian = "little") { 1 } else { 2 };
    let machine = if cfg!(target_arch = "x86_64") {
        EM_X86_64
    } else if cfg!(target_arch = "aarch64") {
        EM_AARCH64
    } else if cfg!(target_arch = "arm") {
        EM_ARM
    } else if cfg!(target_arch = "x86") {
        EM_386
    } else {
        0
    };
    Elf {
        class,
        data,
        machine,
    }
}

/// This build's target name in a release index; `None` on a CPU the
/// channel has no name for (the updater then says so and does nothing).
pub fn running_target() -> Option<&'static str> {
    if cfg!(target_arch = "x86_64") {
        Some("linux-amd64")
    } else if cfg!(target_arch = "aarch64") {
        Some("linux-arm64")
    } else if cfg!(all(target_arch = "arm", target_feature = "v7")) {
        Some("linux-armv7")
    } else if cfg!(target_arch = "arm") {
        Some("linux-armv6")
    } else if cfg!(target_arch = "x86") {
        Some("linux-386")
    } else {
        None
    }
}

/// The target names an ELF header fits (both ARM names for a 32-bit ARM).
pub fn targets_of(elf: Elf) -> impl Iterator<Item = &'static str> {
    TARGETS
        .iter()
        .filter(move |(_, e)| *e == elf)
        .map(|(t, _)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0x7f, b'E', b'L', b'F', class, data, 1, 0];
        h.resize(18, 0);
        let m = if data == 2 {
            machine.to_be_bytes()
        } else {
            machine.to_le_bytes()
        };
        h.extend_from_slice(&m);
        h
    }

    #[test]
    fn elf_headers_name_their_machine() {
        assert_eq!(
            identify(&elf(2, 1, EM_X86_64)),
            Some(Kind::Elf(Elf {
                class: 2,
                data: 1,
                machine: EM_X86_64
            }))
        );
        assert_eq!(
            identify(&elf(2, 2, 22)),
            Some(Kind::Elf(Elf {
                class: 2,
                data: 2,
                machine: 22
            }))
        );
        let arm: Vec<_> = targets_of(Elf {
            class: 1,
            data: 1,
            machine: EM_ARM,
        })
        .collect();
        assert_eq!(arm, ["linux-armv7", "linux-armv6"]);
    }

    #[test]
    fn short_or_foreign_headers_are_not_executables() {
        assert_eq!(identify(b"\x7fELF"), None);
        assert_eq!(identify(&elf(3, 1, EM_X86_64)), None);
        assert_eq!(identify(&elf(2, 0, EM_X86_64)), None);
        assert_eq!(identify(b"#!/bin/sh\n"), None);
        assert_eq!(identify(b""), None);
        assert_eq!(identify(b"MZ\x90\x00"), Some(Kind::Pe));
        assert_eq!(identify(b"\xcf\xfa\xed\xfe"), Some(Kind::MachO));
        assert_eq!(identify(b"\xfe\xed\xfa\xcf"), None);
    }

    #[test]
    fn this_build_has_a_target_name_that_fits_its_elf() {
        let t = running_target().expect("a supported CPU");
        assert!(targets_of(running()).any(|x| x == t));
    }
}
