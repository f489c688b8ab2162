//! promtool's expanding notation for test series: `a+bxN` is a, a+b, …, a+N·b (N+1 values);
//! `a-bxN` counts down; `axN` repeats a N+1 times; `_` is a missing sample and `_xN` is N of
//! them; `stale` is missing too.

/// Parses a series; each element is a value or `None` for a missing sample.
pub fn parse_series(src: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for tok in src.split_whitespace() {
        if tok == "_" || tok == "stale" {
            out.push(None);
            continue;
        }
        let (head, times) = match tok.rsplit_once('x') {
            Some((h, n)) => {
                let n: usize = n.parse().map_err(|_| format!("invalid repeat count in {tok:?}"))?;
                if n > 1_000_000 {
                    return Err(format!("repeat count too large in {tok:?}"));
                }
                (h, Some(n))
            }
            None => (tok, None),
        };
        if head == "_" {
            let n = times.unwrap_or(1);
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        let (start, step) = split_step(head).ok_or_else(|| format!("invalid series element {tok:?} (expected a number, a+bxN, axN or _)"))?;
        match times {
            None if step.is_some() => return Err(format!("{tok:?}: a step needs a repeat count, as in {head}x10")),
            None => out.push(Some(start)),
            Some(n) => {
                let step = step.unwrap_or(0.0);
                out.extend((0..=n).map(|i| Some(start + step * i as f64)));
            }
        }
    }
    if out.is_empty() {
        return Err("empty series".into());
    }
    Ok(out)
}

/// Splits `a+b` / `a-b` / `a` into (a, Some(±b) | None).
fn split_step(s: &str) -> Option<(f64, Option<f64>)> {
    let b = s.as_bytes();
    // An operator after the first character that is not an exponent sign.
    let op = (1..b.len()).rev().find(|&i| (b[i] == b'+' || b[i] == b'-') && !matches!(b[i - 1], b'e' | b'E'));
    match op {
        Some(i) => {
            let a: f64 = s[..i].parse().ok()?;
            let step: f64 = s[i + 1..].parse().ok()?;
            Some((a, Some(if b[i] == b'-' { -step } else { step })))
        }
        None => Some((s.parse().ok()?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(src: &str) -> Vec<Option<f64>> {
        parse_series(src).unwrap()
    }

    #[test]
    fn expands_like_promtool() {
        assert_eq!(v("1 2 3"), vec![Some(1.0), Some(2.0), Some(3.0)]);
        assert_eq!(v("-2+4x3"), vec![Some(-2.0), Some(2.0), Some(6.0), Some(10.0)]);
        assert_eq!(v("10-2x2"), vec![Some(10.0), Some(8.0), Some(6.0)]);
        assert_eq!(v("0.5x2"), vec![Some(0.5); 3]);
        assert_eq!(v("1 _x3 2"), vec![Some(1.0), None, None, None, Some(2.0)]);
        assert_eq!(v("1 _ stale"), vec![Some(1.0), None, None]);
        assert_eq!(v("1e-3x1"), vec![Some(0.001); 2]);
        assert_eq!(v("0.9995x4 0.97x30").len(), 36);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "1xq", "1+2", "1x", "x3"] {
            assert!(parse_series(bad).is_err(), "{bad:?}");
        }
    }
}
