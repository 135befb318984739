//! The host CPU, as `/proc/cpuinfo` describes it: the model name and the
//! instruction-set extensions that decide which code XLA's CPU backend can
//! run fast (AVX2, AVX-512, bf16 and f16 arithmetic, AMX tiles).

/// The extensions reported, in this order, when the CPU has them.
const FEATURES: [&str; 8] =
    ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"];

/// The CPU's model name and which of [`FEATURES`] it has; `None` where
/// `/proc/cpuinfo` cannot be read (not Linux).
pub fn describe() -> Option<(String, Vec<&'static str>)> {
    parse(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn parse(info: &str) -> Option<(String, Vec<&'static str>)> {
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .map(|l| l.split_once(':').map_or("", |(_, v)| v.trim()))
    };
    let model = field("model name").unwrap_or("unknown CPU").to_string();
    let flags: Vec<&str> = field("flags")?.split_whitespace().collect();
    Some((model, FEATURES.into_iter().filter(|f| flags.contains(f)).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_and_known_features_are_read() {
        let info =
            "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 fma avx512f amx_tile avx512_bf16 sse\n";
        let (model, features) = parse(info).unwrap();
        assert_eq!(model, "Some Xeon");
        assert_eq!(features, ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]);
        assert!(parse("processor: 0\n").is_none());
    }
}
