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

    /// The canonical string in `format`, as apimachinery serialises quantities: the largest
    /// suffix that keeps the number whole (`1000m` → `1`, `0.5` → `500m`, `1024Mi` → `1Gi`,
    /// `1000` → `1k` in decimal SI but `1e3` as an exponent). Binary quantities that are not
    /// whole multiples of 1024 fall back to decimal SI, as in Kubernetes.
    pub fn canonical(self, format: Format) -> String {
        let sign = if self.nanos < 0 { "-" } else { "" };
        let n = self.nanos.unsigned_abs();
        if n == 0 {
            return "0".to_owned();
        }
        if format == Format::BinarySi && n.is_multiple_of(NANO as u128) {
            let mut units = n / NANO as u128;
            if units < 1024 {
                return format!("{sign}{units}");
            }
            let mut suffix = 0;
            while suffix < 6 && units.is_multiple_of(1024) {
                units /= 1024;
                suffix += 1;
            }
            const BINARY: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
            // apimachinery only uses a binary suffix when it is exact; otherwise it falls
            // back to decimal below.
            if suffix > 0 {
                return format!("{sign}{units}{}", BINARY[suffix]);
            }
        }
        // Decimal: mantissa * 10^exp with exp a multiple of 3, mantissa without trailing
        // thousands.
        let (mut mantissa, mut exp) = (n, -9i32);
        while mantissa.is_multiple_of(1000) && exp < 18 {
            mantissa /= 1000;
            exp += 3;
        }
        if format == Format::DecimalExponent {
            return if exp == 0 {
                format!("{sign}{mantissa}")
            } else {
                format!("{sign}{mantissa}e{exp}")
            };
        }
        let suffix = match exp {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            0 => "",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            _ => "E",
        };
        format!("{sign}{mantissa}{suffix}")
    }
}

/// How a quantity was written, which its canonical form keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `Ki`, `Mi`, … suffixes.
    BinarySi,
    /// `m`, `k`, `M`, … suffixes, or none.
    DecimalSi,
    /// `e3`, `E-2`.
    DecimalExponent,
}

impl Format {
    /// The format of a quantity string (assumed to parse).
    pub fn of(s: &str) -> Format {
        let suffix = s
            .trim()
            .trim_start_matches(['+', '-'])
            .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
        if suffix.ends_with('i') {
            Format::BinarySi
        } else if suffix.starts_with(['e', 'E']) {
            Format::DecimalExponent
        } else {
            Format::DecimalSi
        }
    }
}

/// The canonical form of a quantity string, or `None` if it does not parse.
pub fn canonicalize(s: &str) -> Option<String> {
    Quantity::parse(s).map(|q| q.canonical(Format::of(s)))
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
    fn canonical_forms_match_apimachinery() {
        let cases = [
            ("1000m", "1"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1024Mi", "1Gi"),
            ("010", "10"),
            ("1500", "1500"),
            ("1000", "1k"),
            ("2000000", "2M"),
            ("128Mi", "128Mi"),
            ("1536Mi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("512Ki", "512Ki"),
            ("1Ki", "1Ki"),
            ("100", "100"),
            ("1e3", "1e3"),
            ("1500e-3", "1500e-3"),
            ("0", "0"),
            ("-500m", "-500m"),
            ("+5", "5"),
            ("10n", "10n"),
            ("1.5Ki", "1536"),
        ];
        for (input, want) in cases {
            assert_eq!(canonicalize(input).as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn rejects_malformed_quantities() {
        for bad in ["", "abc", "1.2.3", "1Qi", ".", "1 Gi", "--1", "1e"] {
            assert!(Quantity::parse(bad).is_none(), "{bad}");
        }
    }
}
