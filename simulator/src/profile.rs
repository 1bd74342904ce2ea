//! Who a simulated meter is — its size, district, daily volume, starting register,
//! battery and water temperature — drawn once per meter from its traits stream
//! ([`crate::rng::Stream::Traits`]), so the same seed gives the same fleet.
//!
//! Sizes follow the fleet's weights (`SimConfig::sizes`, default all DN15); districts
//! are drawn uniformly from `SimConfig::districts`. Volumes grow with the size, from a
//! household's 120–600 L/day on DN15 to a business's 5–20 m³/day on DN50 and up.

use meterflow_model::{MeterSize, VeeRules};

use crate::config::SimConfig;
use crate::rng::SplitMix64;

/// Register at the first reading, litres: a meter a few years into service.
const START_REGISTER_L: (u64, u64) = (10_000, 99_999);
/// Starting temperature range, 0.1 °C.
const TEMP_START: (u64, u64) = (100, 160);
const BATTERY_PERCENT: (u64, u64) = (60, 100);

/// Daily volume range of a meter of `size`, litres.
pub const fn daily_litres_range(size: MeterSize) -> (u64, u64) {
    match size {
        // One to four people at 100–150 L each.
        MeterSize::Dn15 => (120, 600),
        // A large household or a small shop.
        MeterSize::Dn20 => (400, 1_500),
        MeterSize::Dn25 => (800, 3_000),
        MeterSize::Dn32 => (1_500, 6_000),
        MeterSize::Dn40 => (3_000, 10_000),
        // Apartment blocks, schools, small industry.
        _ => (5_000, 20_000),
    }
}

/// One meter's fixed traits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterProfile {
    pub size: MeterSize,
    /// District metered area; `None` when the fleet names no districts.
    pub district: Option<String>,
    /// Average daily volume, litres.
    pub daily_litres: u64,
    /// Register at the first reading, litres.
    pub start_register: u64,
    /// The register wraps to 0 here (the service's default digits for the size).
    pub capacity: u64,
    pub battery: u8,
    /// Starting water temperature, 0.1 °C.
    pub temp: i16,
}

impl MeterProfile {
    /// Draws meter traits from `traits` for a meter of `config`'s fleet.
    pub(crate) fn draw(config: &SimConfig, traits: &mut SplitMix64) -> Self {
        let size = draw_size(config, traits);
        let district = if config.districts.is_empty() {
            None
        } else {
            let last = config.districts.len() as u64 - 1;
            let pick = usize::try_from(traits.between((0, last))).unwrap_or(0);
            config.districts.get(pick).cloned()
        };
        let daily_litres = traits.between(daily_litres_range(size));
        let start_register = traits.between(START_REGISTER_L);
        // The ranges fit the target types, so these conversions cannot fail.
        let temp = i16::try_from(traits.between(TEMP_START)).unwrap_or(120);
        let battery = u8::try_from(traits.between(BATTERY_PERCENT)).unwrap_or(100);
        Self {
            size,
            district,
            daily_litres,
            start_register,
            capacity: VeeRules::default().register_capacity(size),
            battery,
            temp,
        }
    }
}

fn draw_size(config: &SimConfig, traits: &mut SplitMix64) -> MeterSize {
    let total: u64 = config.sizes.values().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return MeterSize::default();
    }
    let mut pick = traits.between((0, total - 1));
    for (&size, &weight) in &config.sizes {
        if pick < u64::from(weight) {
            return size;
        }
        pick -= u64::from(weight);
    }
    MeterSize::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, meter_stream};

    #[test]
    fn sizes_follow_the_weights_and_districts_are_all_used() {
        let config = SimConfig {
            sizes: [(MeterSize::Dn15, 90), (MeterSize::Dn40, 10)].into(),
            districts: vec!["north".into(), "south".into(), "harbour".into()],
            ..SimConfig::default()
        };
        let mut large = 0;
        let mut districts = std::collections::BTreeMap::new();
        for index in 0..10_000 {
            let profile =
                MeterProfile::draw(&config, &mut meter_stream(1, "t", index, Stream::Traits));
            let range = daily_litres_range(profile.size);
            assert!((range.0..=range.1).contains(&profile.daily_litres));
            assert!(profile.start_register < profile.capacity);
            large += u32::from(profile.size == MeterSize::Dn40);
            *districts.entry(profile.district.unwrap()).or_insert(0) += 1;
        }
        assert!((800..=1_200).contains(&large), "{large}");
        assert_eq!(districts.len(), 3);
        assert!(districts.values().all(|&n| n > 3_000), "{districts:?}");
    }

    #[test]
    fn a_fleet_without_sizes_or_districts_is_household_meters() {
        let profile = MeterProfile::draw(
            &SimConfig::default(),
            &mut meter_stream(1, "t", 0, Stream::Traits),
        );
        assert_eq!(profile.size, MeterSize::Dn15);
        assert_eq!(profile.district, None);
    }
}
