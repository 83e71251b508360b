//! A component of no Sluice world: it exports `configure`, a misspelt `authorise`, and an
//! `evaluate` of the wrong type — what an author gets by building against a stale or edited
//! copy of the contract. The host must reject it naming what is missing or mismatched.

// wit-bindgen's export glue is FFI (`#[unsafe(export_name)]` functions lifting raw pointers).
#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        inline: "
            package test:wrong;
            world wrong {
                export configure: func(config: string) -> result<_, string>;
                export authorise: func(listener: string) -> bool;
                export evaluate: func(id: string) -> bool;
            }
        ",
        world: "wrong",
    });

    struct Wrong;

    impl Guest for Wrong {
        fn configure(_config: String) -> Result<(), String> {
            Ok(())
        }

        fn authorise(_listener: String) -> bool {
            true
        }

        fn evaluate(_id: String) -> bool {
            true
        }
    }

    export!(Wrong);
}
