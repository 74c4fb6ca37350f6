// `sqlx::migrate!()` embeds migrations/ at compile time; without this, adding a migration
// file does not rebuild the crate and the binary silently runs the old set (sqlx's advice,
// `sqlx migrate build-script`).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
