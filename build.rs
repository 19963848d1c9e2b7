// `sqlx::migrate!` embeds the migrations when the crate compiles; a new file in `migrations/` must
// make it compile again (as sqlx's documentation asks).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
