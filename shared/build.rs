// `sqlx::migrate!` embeds shared/migrations at compile time; a new or edited .sql file alone must
// rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
