//! Ethernet addresses.

use std::fmt;
use std::str::FromStr;

/// An Ethernet (MAC) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// The Xen OUI, which LXD and Incus also use for the addresses they make up, so that tools that
/// recognise those recognise ours.
const OUI: [u8; 3] = [0x00, 0x16, 0x3e];

impl MacAddr {
    /// A stable address for `seed` (a bridge or NIC name): the same seed gives the same address,
    /// so a bridge keeps its MAC across restarts and neighbours' ARP caches stay right.
    pub fn from_seed(seed: &str) -> MacAddr {
        let h = crate::hash::fnv1a(seed.as_bytes()).to_be_bytes();
        MacAddr([OUI[0], OUI[1], OUI[2], h[0], h[1], h[2]])
    }

    /// A random address under the same OUI.
    pub fn random() -> std::io::Result<MacAddr> {
        let r: [u8; 3] = crate::hash::random_bytes()?;
        Ok(MacAddr([OUI[0], OUI[1], OUI[2], r[0], r[1], r[2]]))
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hexadecimal bytes separated by ':'")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<MacAddr, ParseMacError> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<&[u8]> for MacAddr {
    type Error = ParseMacError;

    fn try_from(bytes: &[u8]) -> Result<MacAddr, ParseMacError> {
        <[u8; 6]>::try_from(bytes)
            .map(MacAddr)
            .map_err(|_| ParseMacError(format!("{bytes:02x?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let mac: MacAddr = "00:16:3E:0a:0B:ff".parse().unwrap();
        assert_eq!(mac.to_string(), "00:16:3e:0a:0b:ff");
        assert_eq!("00-16-3e-0a-0b-ff".parse::<MacAddr>().unwrap(), mac);
        for bad in [
            "",
            "00:16:3e",
            "00:16:3e:0a:0b:ff:00",
            "0:16:3e:0a:0b:ff",
            "zz:16:3e:0a:0b:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn seeded_addresses_are_stable_and_unicast() {
        let a = MacAddr::from_seed("corralbr0");
        assert_eq!(a, MacAddr::from_seed("corralbr0"));
        assert_ne!(a, MacAddr::from_seed("corralbr1"));
        assert_eq!(a.0[0] & 1, 0, "not multicast");
        assert_eq!(&a.0[..3], &OUI);
    }
}
