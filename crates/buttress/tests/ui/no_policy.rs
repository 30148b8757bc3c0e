#[buttress::resilient]
async fn no_policy() -> Result<(), buttress::BoxError> {
    Ok(())
}

fn main() {}
