fn main() {
    torch_link::bake_rpath();
    torch_link::export_libtorch_lib();
}
