//! Address ranges in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a bare address).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address range. Host bits given in the text are cleared (`10.1.2.3/8` is `10.0.0.0/8`), as
/// Go's `net.ParseCIDR` does, so ranges copied from Fabio or Consul configs keep their meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a text is not a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not a CIDR range: {}", self.input, self.reason)
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// Parses `ADDR/LEN` or a bare `ADDR` (a range of one address).
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let error = |reason| CidrError {
            input: text.to_owned(),
            reason,
        };
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, len)) => {
                let len: u8 = len
                    .parse()
                    .map_err(|_| error("prefix length is not a number"))?;
                (address, Some(len))
            }
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| error("not an IP address"))?;
        let max_len = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix_len = prefix_len.unwrap_or(max_len);
        if prefix_len > max_len {
            return Err(error("prefix length is longer than the address"));
        }
        Ok(Cidr {
            network: mask(address, prefix_len),
            prefix_len,
        })
    }

    /// Whether `address` lies in the range. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`)
    /// match IPv4 ranges, since dual-stack listeners report IPv4 clients that way.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match (self.network, address) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, address) => address,
        };
        match (self.network, address) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(address, self.prefix_len) == self.network
            }
            _ => false,
        }
    }

    /// The first address of the range.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The number of leading bits that are fixed.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Cidr::parse(text)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn mask(address: IpAddr, prefix_len: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((bits & keep).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((bits & keep).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_ranges_match_their_addresses_only() {
        let range = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(range.contains(ip("10.1.255.7")));
        assert!(!range.contains(ip("10.2.0.1")));
        assert!(
            range.contains(ip("::ffff:10.1.0.9")),
            "IPv4-mapped IPv6 matches"
        );
        assert!(!range.contains(ip("2001:db8::1")));
    }

    #[test]
    fn host_bits_are_cleared_and_bare_addresses_are_single_ranges() {
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        let single = Cidr::parse("192.168.1.5").unwrap();
        assert_eq!(single.prefix_len(), 32);
        assert!(single.contains(ip("192.168.1.5")));
        assert!(!single.contains(ip("192.168.1.6")));
    }

    #[test]
    fn zero_length_prefix_matches_every_address_of_its_family() {
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("203.0.113.9"))
        );
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
    }

    #[test]
    fn ipv6_ranges() {
        let range = Cidr::parse("2001:db8::/32").unwrap();
        assert!(range.contains(ip("2001:db8:ffff::1")));
        assert!(!range.contains(ip("2001:db9::1")));
    }

    #[test]
    fn bad_ranges_say_why() {
        assert_eq!(
            Cidr::parse("10.0.0.0/33").unwrap_err().reason,
            "prefix length is longer than the address"
        );
        assert_eq!(
            Cidr::parse("10.0.0/8").unwrap_err().reason,
            "not an IP address"
        );
        assert_eq!(
            Cidr::parse("10.0.0.0/x").unwrap_err().reason,
            "prefix length is not a number"
        );
    }
}
