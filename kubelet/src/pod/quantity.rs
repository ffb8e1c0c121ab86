//! Reading Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1G`, `1e3`) exactly.
//!
//! They are decimals, not floats: a float rounds `0.1` and the last digits of a large byte
//! count, and turns an absurd request into a wrapped or saturated integer. Every step is
//! checked, so a quantity either reads exactly or is refused as out of range.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// Why a quantity cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not the quantity syntax at all.
    #[error("is not a quantity")]
    Malformed,
    /// A quantity, but negative or larger than can be counted.
    #[error("is out of range")]
    OutOfRange,
}

/// The largest decimal exponent a quantity may carry; `Decimal` holds 28 digits.
const MAX_EXPONENT: u32 = 28;

/// The quantity's exact value in base units (cores, bytes).
pub fn parse(quantity: &Quantity) -> Result<Decimal, QuantityError> {
    let text = quantity.0.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if !is_number(number) {
        return Err(QuantityError::Malformed);
    }
    // A number with more significant digits than a Decimal holds is refused, never rounded.
    let value = Decimal::from_str_exact(number).map_err(|_| QuantityError::OutOfRange)?;
    let (base, exponent): (u64, i32) = match suffix {
        "" => (10, 0),
        "n" => (10, -9),
        "u" => (10, -6),
        "m" => (10, -3),
        "k" => (10, 3),
        "M" => (10, 6),
        "G" => (10, 9),
        "T" => (10, 12),
        "P" => (10, 15),
        "E" => (10, 18),
        "Ki" => (1024, 1),
        "Mi" => (1024, 2),
        "Gi" => (1024, 3),
        "Ti" => (1024, 4),
        "Pi" => (1024, 5),
        "Ei" => (1024, 6),
        exp if exp.starts_with(['e', 'E']) => {
            (10, exp[1..].parse().map_err(|_| QuantityError::Malformed)?)
        }
        _ => return Err(QuantityError::Malformed),
    };
    let magnitude = exponent.unsigned_abs();
    if magnitude > MAX_EXPONENT {
        return Err(QuantityError::OutOfRange);
    }
    let factor = base
        .checked_pow(magnitude)
        .map(Decimal::from)
        .ok_or(QuantityError::OutOfRange)?;
    let scaled = if exponent >= 0 {
        value.checked_mul(factor)
    } else {
        value.checked_div(factor)
    };
    scaled.ok_or(QuantityError::OutOfRange)
}

/// The quantity grammar's signed number: an optional sign, then digits with at most one
/// decimal point among or around them.
fn is_number(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && digits(fraction) && !(whole.is_empty() && fraction.is_empty())
}

/// CPU in millicores, rounded up as the kubelet does.
pub fn cpu_millis(quantity: &Quantity) -> Result<u64, QuantityError> {
    whole(
        parse(quantity)?
            .checked_mul(Decimal::ONE_THOUSAND)
            .ok_or(QuantityError::OutOfRange)?,
    )
}

/// Memory (or storage) in bytes, rounded up; also any whole count, such as an extended
/// resource's.
pub fn bytes(quantity: &Quantity) -> Result<u64, QuantityError> {
    whole(parse(quantity)?)
}

/// `value` rounded up to a count: never negative, never past `u64`.
fn whole(value: Decimal) -> Result<u64, QuantityError> {
    value.ceil().to_u64().ok_or(QuantityError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn cpu_and_memory_forms_parse() {
        assert_eq!(cpu_millis(&q("100m")), Ok(100));
        assert_eq!(cpu_millis(&q("1.5")), Ok(1500));
        assert_eq!(cpu_millis(&q("2")), Ok(2000));
        assert_eq!(cpu_millis(&q("1u")), Ok(1), "rounded up");
        assert_eq!(bytes(&q("128Mi")), Ok(128 * 1024 * 1024));
        assert_eq!(bytes(&q("1G")), Ok(1_000_000_000));
        assert_eq!(bytes(&q("1e3")), Ok(1000));
        assert_eq!(bytes(&q("+.5Ki")), Ok(512));
        assert_eq!(bytes(&q("4194304Ki")), Ok(4 * 1024 * 1024 * 1024));
    }

    #[test]
    fn values_are_exact_where_a_float_would_round() {
        // 2^53 + 1 is the first integer an f64 cannot hold.
        assert_eq!(bytes(&q("9007199254740993")), Ok(9_007_199_254_740_993));
        // 0.1 + 0.2 in floats is 0.30000000000000004, which rounds up to 301m.
        assert_eq!(parse(&q("0.3")), Ok(Decimal::new(3, 1)));
        assert_eq!(cpu_millis(&q("0.3")), Ok(300));
        assert_eq!(bytes(&q("18446744073709551615")), Ok(u64::MAX));
    }

    #[test]
    fn absurd_amounts_are_out_of_range_not_wrapped() {
        for absurd in [
            "18446744073709551616",
            "1e30",
            "100Ei",
            "1e-40",
            "-1",
            "-100m",
        ] {
            assert_eq!(
                bytes(&q(absurd)),
                Err(QuantityError::OutOfRange),
                "{absurd}"
            );
        }
        // Fits as bytes, not once counted in thousandths.
        assert_eq!(
            cpu_millis(&q("18446744073709551615")),
            Err(QuantityError::OutOfRange)
        );
        assert_eq!(
            parse(&q("99999999999999999999999999999")),
            Err(QuantityError::OutOfRange),
            "29 digits do not fit a decimal exactly"
        );
    }

    #[test]
    fn garbage_does_not_parse() {
        for bad in [
            "",
            "abc",
            "1Xi",
            "--1",
            "1e",
            "1_000",
            "1ee3",
            ".",
            "1.2.3",
            "1e99999999999",
        ] {
            assert_eq!(parse(&q(bad)), Err(QuantityError::Malformed), "{bad}");
        }
    }
}
