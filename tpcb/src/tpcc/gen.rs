//! The specification's random data (clause 4.3.2 and 2.1.6): NURand,
//! customer last names from syllables, random strings, `ORIGINAL` data.

use rand::distr::Alphanumeric;
use rand::Rng;

use super::TpccScale;

/// The run-time constant `C` of NURand for each `A` (clause 2.1.6). Last
/// names use a different `C` at load and at run time, 66 apart as clause
/// 2.1.6.1 requires (65..=119, not 96 or 112).
pub(crate) const C_LAST_LOAD: i64 = 157;
pub(crate) const C_LAST_RUN: i64 = 223;
const C_ID: i64 = 259;
const C_OL_I_ID: i64 = 7911;

/// The syllables of a customer's last name (clause 4.3.2.3).
const SYLLABLES: [&str; 10] = [
    "BAR", "OUGHT", "ABLE", "PRI", "PRES", "ESE", "ANTI", "CALLY", "ATION", "EING",
];

/// NURand(A, x, y) = (((random(0, A) | random(x, y)) + C) % (y − x + 1)) + x.
pub(crate) fn nurand(rng: &mut impl Rng, a: i64, c: i64, x: i64, y: i64) -> i64 {
    (((rng.random_range(0..=a) | rng.random_range(x..=y)) + c) % (y - x + 1)) + x
}

/// A customer id for a transaction: NURand(1023, 1, customers).
pub(crate) fn customer_id(rng: &mut impl Rng, scale: &TpccScale) -> i32 {
    nurand(rng, 1023, C_ID, 1, i64::from(scale.customers)) as i32
}

/// An item id for a transaction: NURand(8191, 1, items).
pub(crate) fn item_id(rng: &mut impl Rng, scale: &TpccScale) -> i32 {
    nurand(rng, 8191, C_OL_I_ID, 1, i64::from(scale.items)) as i32
}

/// The largest last-name number in use: 999, or fewer when fewer
/// customers are loaded (customer `c` ≤ 1,000 is named after `c − 1`, so
/// with at most 1,000 customers every number up to `customers − 1` exists
/// in every district and a lookup by name always finds someone).
pub(crate) fn max_name_number(scale: &TpccScale) -> i64 {
    i64::from(scale.customers.min(1000) - 1)
}

/// A last name for a transaction: NURand(255, 0, 999) with the run's `C`.
pub(crate) fn run_last_name(rng: &mut impl Rng, scale: &TpccScale) -> String {
    last_name(nurand(rng, 255, C_LAST_RUN, 0, max_name_number(scale)) as u32)
}

/// The last name of loaded customer `c_id` (clause 4.3.3.1).
pub(crate) fn load_last_name(rng: &mut impl Rng, scale: &TpccScale, c_id: i32) -> String {
    if c_id <= 1000 {
        last_name((c_id - 1) as u32)
    } else {
        last_name(nurand(rng, 255, C_LAST_LOAD, 0, max_name_number(scale)) as u32)
    }
}

/// The last name of number `n` (0..=999): its three digits as syllables.
pub(crate) fn last_name(n: u32) -> String {
    let n = n as usize;
    [n / 100, n / 10 % 10, n % 10]
        .iter()
        .map(|&d| SYLLABLES[d])
        .collect()
}

/// A random a-string of `lo..=hi` alphanumeric characters.
pub(crate) fn astring(rng: &mut impl Rng, lo: usize, hi: usize) -> String {
    let len = rng.random_range(lo..=hi);
    (0..len).map(|_| rng.sample(Alphanumeric) as char).collect()
}

/// A random n-string of `len` digits.
pub(crate) fn nstring(rng: &mut impl Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// A zip code: four random digits and "11111".
pub(crate) fn zip(rng: &mut impl Rng) -> String {
    nstring(rng, 4) + "11111"
}

/// `i_data` / `s_data`: an a-string of 26..=50 characters, in 10 % of the
/// rows with "ORIGINAL" at a random position.
pub(crate) fn data(rng: &mut impl Rng) -> String {
    let mut s = astring(rng, 26, 50);
    if rng.random_range(0..10) == 0 {
        let at = rng.random_range(0..=s.len() - 8);
        s.replace_range(at..at + 8, "ORIGINAL");
    }
    s
}

/// A decimal with `scale` fraction digits from an integer number of its
/// smallest units (`cents(1234, 2)` = "12.34").
pub(crate) fn fixed(units: i64, scale: u32) -> String {
    let div = 10i64.pow(scale);
    let sign = if units < 0 { "-" } else { "" };
    let u = units.unsigned_abs();
    let d = div as u64;
    format!("{sign}{}.{:0width$}", u / d, u % d, width = scale as usize)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn last_names_from_syllables() {
        assert_eq!(last_name(0), "BARBARBAR");
        assert_eq!(last_name(371), "PRICALLYOUGHT");
        assert_eq!(last_name(999), "EINGEINGEING");
        let scale = TpccScale::new(1);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(load_last_name(&mut rng, &scale, 1), "BARBARBAR");
        assert_eq!(load_last_name(&mut rng, &scale, 1000), "EINGEINGEING");
    }

    #[test]
    fn nurand_stays_in_range_and_is_skewed() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut hits = vec![0u32; 3001];
        for _ in 0..300_000 {
            let v = nurand(&mut rng, 1023, C_ID, 1, 3000);
            assert!((1..=3000).contains(&v), "{v}");
            hits[v as usize] += 1;
        }
        // Non-uniform: the most drawn id is drawn far more often than the
        // uniform 100 times.
        assert!(*hits.iter().max().unwrap() > 300, "{:?}", hits.iter().max());
        let small = TpccScale {
            warehouses: 1,
            items: 50,
            customers: 20,
        };
        for _ in 0..10_000 {
            assert!((1..=50).contains(&item_id(&mut rng, &small)));
            assert!((1..=20).contains(&customer_id(&mut rng, &small)));
            let name = run_last_name(&mut rng, &small);
            let n = (0..20).find(|&n| last_name(n) == name);
            assert!(n.is_some(), "{name} is no loaded customer's name");
        }
    }

    #[test]
    fn strings_and_original_data() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut original = 0;
        for _ in 0..10_000 {
            let s = astring(&mut rng, 8, 16);
            assert!((8..=16).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric()));
            let n = nstring(&mut rng, 16);
            assert!(n.len() == 16 && n.chars().all(|c| c.is_ascii_digit()));
            assert!(zip(&mut rng).ends_with("11111"));
            let d = data(&mut rng);
            assert!((26..=50).contains(&d.len()), "{d}");
            original += usize::from(d.contains("ORIGINAL"));
        }
        // About 10 %.
        assert!((800..1200).contains(&original), "{original}");
    }

    #[test]
    fn fixed_point_text() {
        assert_eq!(fixed(1234, 2), "12.34");
        assert_eq!(fixed(-1000, 2), "-10.00");
        assert_eq!(fixed(5, 4), "0.0005");
        assert_eq!(fixed(0, 2), "0.00");
    }
}
