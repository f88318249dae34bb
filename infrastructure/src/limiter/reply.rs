//! The script's replies: a check's or a peek's tally, packed in one bulk
//! string (see `check.lua`), or the claim that already held a check's
//! `Idempotency-Key`.

use pantheon_domain::idempotency::KeyClaim;
use pantheon_domain::limiter::Tally;
use redis::Value;

/// Parses the script's answer to a check: its tally, or (`C` and the
/// claim) the claim that already held the check's key.
///
/// # Errors
/// A message when the reply has another shape.
pub fn parse_check(values: Vec<Value>) -> Result<Result<Tally, KeyClaim>, String> {
    if let [Value::BulkString(bytes)] = &values[..]
        && let Some(held) = bytes.strip_prefix(b"C")
    {
        let held = std::str::from_utf8(held).ok().and_then(KeyClaim::decode);
        return held.map(Err).ok_or_else(|| "a claim the script returned does not parse".into());
    }
    parse_tally(values).map(Ok)
}

/// Parses the script's tally of a check or a peek: twelve big-endian
/// 64-bit integers in one bulk reply, `admitted, clock, active, output
/// cap`, four loads, four instants (an instant of -1: never).
///
/// # Errors
/// A message when the reply has another shape.
pub fn parse_tally(values: Vec<Value>) -> Result<Tally, String> {
    let [value] = <[Value; 1]>::try_from(values).map_err(|v| format!("{} replies", v.len()))?;
    let Value::BulkString(bytes) = value else {
        return Err(format!("script returned {value:?}, expected its packed tally"));
    };
    if bytes.len() != 96 {
        return Err(format!("script returned {} bytes, expected 96", bytes.len()));
    }
    let fields: Vec<i64> = bytes
        .chunks_exact(8)
        .map(|field| field.try_into().map(i64::from_be_bytes).unwrap_or_default())
        .collect();
    let [admitted, at_ms, active, output_cap, l1, l2, l3, l4, f1, f2, f3, f4] = fields[..] else {
        return Err("a packed tally of 96 bytes held other than 12 fields".into());
    };
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let instant = |at: i64| if at < 0 { i64::MAX } else { at };
    Ok(Tally {
        admitted: admitted == 1,
        at_ms,
        active: count(active),
        output_cap: count(output_cap),
        loads: [l1, l2, l3, l4].map(count),
        frees_at: [f1, f2, f3, f4].map(instant),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(fields: [i64; 12]) -> Value {
        Value::BulkString(fields.iter().flat_map(|f| f.to_be_bytes()).collect())
    }

    #[test]
    fn a_packed_tally_is_read_field_by_field_and_anything_else_is_refused() {
        let fields = [1, 1_700_000_000_123, 2, 512, 3, 40, 700, 9_000, 5, -1, 1_700_000_060_000, 0];
        let tally = parse_tally(vec![packed(fields)]);
        assert_eq!(
            tally,
            Ok(Tally {
                admitted: true,
                at_ms: 1_700_000_000_123,
                active: 2,
                output_cap: 512,
                loads: [3, 40, 700, 9_000],
                frees_at: [5, i64::MAX, 1_700_000_060_000, 0],
            })
        );
        let Value::BulkString(mut short) = packed(fields) else { unreachable!() };
        short.pop();
        assert!(parse_tally(vec![Value::BulkString(short)]).is_err());
        let array = Value::Array(fields.iter().map(|f| Value::Int(*f)).collect());
        assert!(parse_tally(vec![array]).is_err(), "the old reply shape");
        assert!(parse_tally(vec![]).is_err());
    }

    #[test]
    fn a_claim_held_is_read_back_and_a_malformed_one_refused() {
        let claim = KeyClaim { turn: pantheon_domain::TurnId::new(), fingerprint: "ab".repeat(32) };
        let reply = Value::BulkString(format!("C{}", claim.encode()).into_bytes());
        assert_eq!(parse_check(vec![reply]), Ok(Err(claim)));
        assert!(parse_check(vec![Value::BulkString(b"Cnonsense".to_vec())]).is_err());
        let fields = [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(parse_check(vec![packed(fields)]), Ok(Ok(_))), "a tally starts with 0");
    }
}
