//! `server.metrics_addr`'s reading: an address, or none.

use std::net::SocketAddr;

/// An address, or `off` / an empty string / `false` for none: an
/// environment variable cannot be unset to `null`.
pub(super) fn optional_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    struct Addr;

    impl serde::de::Visitor<'_> for Addr {
        type Value = Option<SocketAddr>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an address such as 127.0.0.1:9464, or off")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v.trim() {
                "" | "off" => Ok(None),
                addr => addr.parse().map(Some).map_err(E::custom),
            }
        }

        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            if v { Err(E::custom("expected an address or off, not true")) } else { Ok(None) }
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    d.deserialize_any(Addr)
}
