fn main() {
    torch_link::bake_rpath();
}
