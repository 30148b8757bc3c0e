#[buttress::resilient(policy = "api")]
fn sync_fn() -> Result<(), buttress::BoxError> {
    Ok(())
}

fn main() {}
