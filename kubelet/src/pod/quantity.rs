//! Reading Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1G`, `1e3`).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The quantity's value in base units (cores, bytes), or `None` if it does not parse.
pub fn parse(quantity: &Quantity) -> Option<f64> {
    let text = quantity.0.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    let result = value * multiplier;
    result.is_finite().then_some(result)
}

/// CPU in millicores.
pub fn cpu_millis(quantity: &Quantity) -> Option<u64> {
    parse(quantity).map(|cores| (cores * 1000.0).ceil().max(0.0) as u64)
}

/// Memory (or storage) in bytes; also any whole count, such as an extended resource's.
pub fn bytes(quantity: &Quantity) -> Option<u64> {
    parse(quantity).map(|b| b.ceil().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn cpu_and_memory_forms_parse() {
        assert_eq!(cpu_millis(&q("100m")), Some(100));
        assert_eq!(cpu_millis(&q("1.5")), Some(1500));
        assert_eq!(cpu_millis(&q("2")), Some(2000));
        assert_eq!(bytes(&q("128Mi")), Some(128 * 1024 * 1024));
        assert_eq!(bytes(&q("1G")), Some(1_000_000_000));
        assert_eq!(bytes(&q("1e3")), Some(1000));
        assert_eq!(bytes(&q("4194304Ki")), Some(4 * 1024 * 1024 * 1024));
    }

    #[test]
    fn garbage_does_not_parse() {
        for bad in ["", "abc", "1Xi", "--1", "1e"] {
            assert_eq!(parse(&q(bad)), None, "{bad}");
        }
    }
}
