#[buttress::resilient(policy = "api")]
async fn returns_unit() {}

fn main() {}
