//! The compilation cache: hits and misses, explanations, corruption,
//! eviction and refusal of unsafe directories.

use std::os::unix::fs::PermissionsExt;
use xlac_runtime::cache::disk::DiskCache;
use xlac_runtime::{
    CacheConfig, CacheOutcome, Client, ClientOptions, CompilationCache, CompileOptions, DType, HostTensor, Program,
    TensorSpec,
};
use xlac_tests::cpu_plugin;

/// `out = a * factor` on f32[4]; each factor is a different program.
fn program(factor: f32) -> Program {
    let spec = |n: &str| TensorSpec { name: n.into(), ty: DType::F32, shape: vec![4] };
    Program::new(
        format!(
            "module @scale {{
  func.func public @main(%a: tensor<4xf32>) -> (tensor<4xf32>) {{
    %c = stablehlo.constant dense<{factor:?}> : tensor<4xf32>
    %0 = stablehlo.multiply %a, %c : tensor<4xf32>
    return %0 : tensor<4xf32>
  }}
}}"
        ),
        vec![spec("a")],
        vec![spec("out")],
    )
}

fn config(dir: &std::path::Path, memory_entries: usize) -> CacheConfig {
    CacheConfig { dir: Some(dir.to_path_buf()), max_bytes: 1 << 30, memory_entries }
}

fn check_runs(exe: &xlac_runtime::Executable, factor: f32) {
    let a = HostTensor::from_array(&ndarray::array![1.0f32, 2.0, 3.0, 4.0]);
    let out = exe.run(&[a.as_ref()]).unwrap();
    assert_eq!(out[0].to_f64_vec(), [1.0, 2.0, 3.0, 4.0].map(|x| x * factor as f64).to_vec());
}

#[test]
fn miss_then_memory_hit_then_disk_hit() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let opts = CompileOptions::default();
    let cache = CompilationCache::new(&config(&dir, 4)).unwrap();
    let (exe, o) = cache.get_or_compile(&client, &program(2.0), &opts).unwrap();
    assert_eq!(o, CacheOutcome::Compiled { note: None });
    check_runs(&exe, 2.0);
    let (_, o) = cache.get_or_compile(&client, &program(2.0), &opts).unwrap();
    assert_eq!(o, CacheOutcome::MemoryHit);
    assert_eq!(cache.memory_len(), 1);
    // A new cache over the same directory (as in a new process) hits on disk.
    let fresh = CompilationCache::new(&config(&dir, 4)).unwrap();
    let (exe, o) = fresh.get_or_compile(&client, &program(2.0), &opts).unwrap();
    assert_eq!(o, CacheOutcome::DiskHit);
    check_runs(&exe, 2.0);
    // Another program misses.
    let (exe, o) = fresh.get_or_compile(&client, &program(3.0), &opts).unwrap();
    assert_eq!(o, CacheOutcome::Compiled { note: None });
    check_runs(&exe, 3.0);
    assert_eq!(fresh.disk().unwrap().entries().unwrap().len(), 2);
    // The directory was created private.
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn explain_names_the_component_that_differs() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = CompileOptions::default();
    let cache = CompilationCache::new(&config(dir.path(), 0)).unwrap();
    let e = cache.explain(&client, &program(2.0), &opts).unwrap();
    assert!(!e.hit && e.closest.is_none());
    cache.get_or_compile(&client, &program(2.0), &opts).unwrap();
    assert!(cache.explain(&client, &program(2.0), &opts).unwrap().hit);
    let e = cache.explain(&client, &program(5.0), &opts).unwrap();
    let (_, differ) = e.closest.expect("one entry to compare with");
    assert_eq!(differ, vec!["program".to_string()]);
    // Another device count is another key, explained as such.
    let four = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(3) }).unwrap();
    let e = cache.explain(&four, &program(2.0), &opts).unwrap();
    assert_eq!(e.closest.unwrap().1, vec!["device_count".to_string()]);
    let labels: Vec<&str> = e.key.components.iter().map(|c| c.label.as_str()).collect();
    for l in [
        "cache_format",
        "xlac_version",
        "program",
        "compile_options",
        "platform_name",
        "platform_version",
        "pjrt_api_version",
        "xla_version",
        "stablehlo_current_version",
        "plugin_digest",
        "device_kind",
        "device_count",
        "xla_flags",
        "workarounds",
    ] {
        assert!(labels.contains(&l), "missing key component {l}");
    }
}

#[test]
fn damaged_entries_are_detected_and_recompiled() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let opts = CompileOptions::default();
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage, &str); 4] = [
        ("truncate", |b| b.truncate(b.len() - 100), "truncated"),
        ("flip a payload byte", |b| *b.last_mut().unwrap() ^= 0xFF, "checksum mismatch"),
        ("another format version", |b| b[8] = 99, "cache format 99"),
        ("garbage", |b| *b = b"hello".to_vec(), "bad magic"),
    ];
    for (what, damage, expected) in damages {
        let dir = tempfile::tempdir().unwrap();
        CompilationCache::new(&config(dir.path(), 0)).unwrap().get_or_compile(&client, &program(2.0), &opts).unwrap();
        let entry = DiskCache::open(dir.path(), 1 << 30).unwrap().entries().unwrap().remove(0).path;
        let mut bytes = std::fs::read(&entry).unwrap();
        damage(&mut bytes);
        std::fs::write(&entry, bytes).unwrap();
        let cache = CompilationCache::new(&config(dir.path(), 0)).unwrap();
        let (exe, o) = cache.get_or_compile(&client, &program(2.0), &opts).unwrap();
        match o {
            CacheOutcome::Compiled { note: Some(note) } => assert!(note.contains(expected), "{what}: {note}"),
            other => panic!("{what}: expected a recompile with a note, got {other:?}"),
        }
        check_runs(&exe, 2.0);
        // The rewritten entry is valid again.
        let again = CompilationCache::new(&config(dir.path(), 0)).unwrap();
        assert_eq!(again.get_or_compile(&client, &program(2.0), &opts).unwrap().1, CacheOutcome::DiskHit, "{what}");
    }
}

#[test]
fn an_entry_under_another_key_is_not_trusted() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let opts = CompileOptions::default();
    let dir = tempfile::tempdir().unwrap();
    let cache = CompilationCache::new(&config(dir.path(), 0)).unwrap();
    cache.get_or_compile(&client, &program(2.0), &opts).unwrap();
    // Put the x2 entry where the x3 program's entry belongs.
    let k3 = cache.key(&client, &program(3.0), &opts).unwrap();
    let e2 = cache.disk().unwrap().entries().unwrap().remove(0).path;
    std::fs::rename(e2, dir.path().join(format!("{}.xlacexe", k3.hex))).unwrap();
    let (exe, o) = cache.get_or_compile(&client, &program(3.0), &opts).unwrap();
    assert!(matches!(&o, CacheOutcome::Compiled { note: Some(n) } if n.contains("holds key")), "{o:?}");
    check_runs(&exe, 3.0);
}

#[test]
fn least_recently_used_entries_are_evicted_under_the_cap() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let opts = CompileOptions::default();
    let dir = tempfile::tempdir().unwrap();
    let probe = CompilationCache::new(&config(dir.path(), 0)).unwrap();
    probe.get_or_compile(&client, &program(5.0), &opts).unwrap();
    let size = probe.disk().unwrap().entries().unwrap()[0].size;
    probe.disk().unwrap().clear().unwrap();
    // Room for two entries, not three.
    let cap = CacheConfig { dir: Some(dir.path().into()), max_bytes: size * 2 + size / 2, memory_entries: 0 };
    let cache = CompilationCache::new(&cap).unwrap();
    for f in [2.0, 3.0] {
        cache.get_or_compile(&client, &program(f), &opts).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Use 2.0 again so that 3.0 is the least recently used.
    assert_eq!(cache.get_or_compile(&client, &program(2.0), &opts).unwrap().1, CacheOutcome::DiskHit);
    std::thread::sleep(std::time::Duration::from_millis(20));
    cache.get_or_compile(&client, &program(4.0), &opts).unwrap();
    let entries = cache.disk().unwrap().entries().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().map(|e| e.size).sum::<u64>() <= cap.max_bytes);
    let key = |f| cache.key(&client, &program(f), &opts).unwrap().hex;
    let kept: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    assert!(kept.contains(&key(2.0).as_str()) && kept.contains(&key(4.0).as_str()), "3.0 should have gone");
}

#[test]
fn unsafe_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = |p: &std::path::Path| CompilationCache::new(&config(p, 0)).err().map(|e| e.to_string());
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = open(&shared).expect("a world-writable directory must be refused");
    assert!(e.contains("others can write to it (mode 777)") && e.contains("runs its code"), "{e}");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
    assert!(open(&shared).is_some(), "a group-writable directory must be refused");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(open(&file).unwrap().contains("not a directory"));
    // Owned by another user: only root can arrange that here.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
    if std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).is_ok() {
        let e = open(&foreign).expect("a foreign-owned directory must be refused");
        assert!(e.contains("owned by user id 65534"), "{e}");
    } else {
        eprintln!("not root: the foreign-owner case is not exercised");
    }
}

#[test]
fn renaming_nodes_or_the_model_keeps_the_key_and_hits() {
    let Some(plugin) = cpu_plugin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let fixture = xlac_tests::repo_root().join("fixtures/mlp");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("model.json")).unwrap()).unwrap();
    doc["name"] = "renamed".into();
    for node in doc["nodes"].as_array_mut().unwrap() {
        node["name"] = format!("renamed_{}", node["outputs"][0].as_str().unwrap()).into();
    }
    for param in doc["parameters"].as_array_mut().unwrap() {
        param["file"] = fixture.join(param["file"].as_str().unwrap()).display().to_string().into();
    }
    let renamed = tmp.path().join("model.json");
    std::fs::write(&renamed, doc.to_string()).unwrap();
    let options = xlac_driver::Options { bindings: [("batch".to_string(), 2)].into(), ..Default::default() };
    let compile = |path: &std::path::Path| xlac_driver::compile_model(path, &options, &Default::default());
    let (a, b) = (compile(&fixture.join("model.json")).unwrap(), compile(&renamed).unwrap());
    assert_ne!(a.lowered.text, b.lowered.text, "the names show in the text");
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let cache = CompilationCache::new(&config(&tmp.path().join("cache"), 0)).unwrap();
    let opts = CompileOptions::default();
    let (pa, pb) = (a.program(), b.program());
    assert_eq!(cache.key(&client, &pa, &opts).unwrap(), cache.key(&client, &pb, &opts).unwrap());
    assert_eq!(cache.get_or_compile(&client, &pa, &opts).unwrap().1, CacheOutcome::Compiled { note: None });
    assert_eq!(cache.get_or_compile(&client, &pb, &opts).unwrap().1, CacheOutcome::DiskHit);
}
