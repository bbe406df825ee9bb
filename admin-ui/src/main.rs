//! The admin app's entry point: trunk builds this binary for the browser.

fn main() {
    leptos::mount::mount_to_body(breakwater_admin_ui::app::App);
}
