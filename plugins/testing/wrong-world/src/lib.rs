//! A well-formed component that exports the wrong interface: the host must refuse it when a
//! Plugin names it, and keep whatever version it had loaded.

wit_bindgen::generate!({
    inline: "
        package skiff-test:wrong@0.1.0;
        world wrong { export greet: func(name: string) -> string; }
    ",
});

struct Wrong;

impl Guest for Wrong {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Wrong);
