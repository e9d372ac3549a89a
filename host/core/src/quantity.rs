//! Resource quantities (`500m`, `1.5Gi`, `2e3`), exact to a nano-unit.
//!
//! The grammar is apimachinery's: a signed decimal number and an optional suffix, either a
//! binary SI one (`Ki` … `Ei`), a decimal SI one (`n`, `u`, `m`, `k`, `M` … `E`) or a
//! decimal exponent (`e3`, `E-2`). Values are kept as a count of nano-units in an `i128`,
//! which holds the largest quantity (`8Ei`) with room to spare; anything finer than a
//! nano-unit is rounded up, as Kubernetes does.

/// A parsed quantity, in nano-units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    nanos: i128,
}

const NANO: i128 = 1_000_000_000;

impl Quantity {
    /// Parses a quantity string; `None` if it is malformed or out of range.
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let (negative, body) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let number_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, suffix) = body.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        // Scale: value = digits * 10^exp10 * 2^exp2.
        let (exp10, exp2): (i32, u32) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            exp if exp.starts_with(['e', 'E']) => (exp[1..].parse::<i32>().ok()?, 0),
            _ => return None,
        };
        if whole.len() + frac.len() > 30 {
            return None;
        }
        let digits: i128 = format!("{whole}{frac}").parse().ok()?;
        // nanos = digits * 10^(exp10 - frac.len() + 9) * 2^exp2, rounded up.
        let exp = exp10 - frac.len() as i32 + 9;
        let mut nanos = digits.checked_mul(1i128.checked_shl(exp2)?)?;
        if exp >= 0 {
            nanos = nanos.checked_mul(10i128.checked_pow(exp as u32)?)?;
        } else {
            let div = 10i128.checked_pow((-exp) as u32)?;
            nanos = (nanos + div - 1) / div;
        }
        Some(Quantity {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// The value in whole units, rounded up (`1500m` → 2).
    pub fn value(self) -> i64 {
        let v = self.nanos.div_euclid(NANO) + i128::from(self.nanos.rem_euclid(NANO) != 0);
        v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The value in thousandths, rounded up (`0.5` → 500).
    pub fn milli_value(self) -> i64 {
        let per_milli = 1_000_000;
        let v =
            self.nanos.div_euclid(per_milli) + i128::from(self.nanos.rem_euclid(per_milli) != 0);
        v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The value in nano-units.
    pub fn nanos(self) -> i128 {
        self.nanos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_suffix() {
        let q = |s| Quantity::parse(s).unwrap();
        assert_eq!(q("500m").milli_value(), 500);
        assert_eq!(q("0.5").milli_value(), 500);
        assert_eq!(q("1").milli_value(), 1000);
        assert_eq!(q("1Gi").value(), 1 << 30);
        assert_eq!(q("1.5Gi").value(), 3 << 29);
        assert_eq!(q("128974848").value(), 128_974_848);
        assert_eq!(q("129e6").value(), 129_000_000);
        assert_eq!(q("123Mi").value(), 128_974_848);
        assert_eq!(q("1500m").value(), 2);
        assert_eq!(q("10n").nanos(), 10);
        assert_eq!(q("-1k").value(), -1000);
        assert!(q("1") < q("1001m"));
        assert!(q("1Gi") > q("1G"));
    }

    #[test]
    fn rejects_malformed_quantities() {
        for bad in ["", "abc", "1.2.3", "1Qi", ".", "1 Gi", "--1", "1e"] {
            assert!(Quantity::parse(bad).is_none(), "{bad}");
        }
    }
}
