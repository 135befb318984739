//! The user's configuration file: settings made once for every run.
//! `XLAC_CONFIG` names it, else `$XDG_CONFIG_HOME/xlac/config.json`, else
//! `~/.config/xlac/config.json`; no file means no settings. It is JSON:
//!
//! ```json
//! {"plugin": "/path/to/pjrt_c_api_cpu_plugin.so"}
//! ```
//!
//! `plugin` is the PJRT plugin to use when neither `--plugin` nor
//! `XLAC_PJRT_PLUGIN` names one (instead of the fastest installed CPU
//! plugin: see [`crate::calibration::find`]).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "XLAC_CONFIG";

/// The user's settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// The plugin library to use.
    pub plugin: Option<PathBuf>,
}

/// Where the configuration file is (whether or not it exists).
pub fn path() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var(CONFIG_ENV)
        .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("xlac/config.json")))
        .or_else(|| var("HOME").map(|h| h.join(".config/xlac/config.json")))
}

impl Config {
    /// The settings in the configuration file; none when there is no file.
    /// A file that is not a JSON object of known keys and types, or whose
    /// plugin is not a file, is an error naming it and the key.
    pub fn load() -> Result<Config> {
        path().map_or_else(|| Ok(Config::default()), |path| Config::read(&path))
    }

    /// The settings in the configuration file at `path` (see [`Config::load`]).
    pub fn read(path: &Path) -> Result<Config> {
        let path = path.to_path_buf();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let bad = |message: String| Error::Format { path: path.clone(), message };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let object = value.as_object().ok_or_else(|| bad("expected a JSON object of settings".into()))?;
        let mut config = Config::default();
        for (key, v) in object {
            match key.as_str() {
                "plugin" => {
                    let p = v.as_str().ok_or_else(|| bad(format!("$.plugin: expected a path string, got {v}")))?;
                    if !Path::new(p).is_file() {
                        return Err(bad(format!("$.plugin: {p}: no such file")));
                    }
                    config.plugin = Some(PathBuf::from(p));
                }
                other => return Err(bad(format!("$.{other}: unknown setting (known: plugin)"))),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).unwrap();
        Config::read(&path)
    }

    #[test]
    fn a_missing_file_is_no_settings() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::read(&dir.path().join("config.json")).unwrap(), Config::default());
    }

    #[test]
    fn the_plugin_setting_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("pjrt_c_api_cpu_plugin.so");
        std::fs::write(&plugin, b"").unwrap();
        let c = read(&serde_json::json!({"plugin": plugin}).to_string()).unwrap();
        assert_eq!(c.plugin, Some(plugin));
        assert_eq!(read("{}").unwrap(), Config::default());
    }

    #[test]
    fn a_bad_file_names_itself_and_the_setting() {
        let error = |text: &str| read(text).unwrap_err().to_string();
        assert!(error("{\"plugin\": ").contains("config.json: not JSON"), "{}", error("{\"plugin\": "));
        assert!(error("[1]").contains("config.json: expected a JSON object of settings"));
        assert!(error(r#"{"plugin": 3}"#).contains("$.plugin: expected a path string, got 3"));
        assert!(error(r#"{"plugins": "x"}"#).contains("$.plugins: unknown setting (known: plugin)"));
        assert!(error(r#"{"plugin": "/no/such/plugin.so"}"#).contains("$.plugin: /no/such/plugin.so: no such file"));
    }
}
