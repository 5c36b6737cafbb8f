//! Prints the GBNF of a JSON Schema file: `cargo run -p nrvna-schema --example gbnf -- schema.json`.

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: gbnf SCHEMA.json");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!("gbnf: reading {path}: {e}");
        std::process::exit(1);
    });
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        eprintln!("gbnf: {path} is not JSON: {e}");
        std::process::exit(1);
    });
    match nrvna_schema::json_schema_to_gbnf(&schema) {
        Ok(g) => print!("{g}"),
        Err(e) => {
            eprintln!("gbnf: {path}: {e}");
            std::process::exit(1);
        }
    }
}
