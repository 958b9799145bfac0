//! Optional conversions for the wider ecosystem: `serde` (deserializing configuration into
//! secrets) and `secrecy` (its boxes in and out). Each is behind a feature of the same name.

#[cfg(feature = "serde")]
mod serde_support {
    use crate::{Error, Secret};
    use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
    use std::fmt;

    /// Deserializes a secret from bytes, a string or a sequence of byte values, into the default
    /// factory ([`ProtectedMemorySecretFactory::DEFAULT`](crate::ProtectedMemorySecretFactory::DEFAULT)).
    ///
    /// What the deserializer hands over as an owned buffer (a `String` or `Vec<u8>` it decoded)
    /// is wiped over its whole capacity; what it lends (`&str`, `&[u8]`) is copied, and the
    /// input it was lent from — the configuration text itself, and any buffer of the
    /// deserializer or reader it went through — still holds the secret: wipe the input after
    /// deserializing (`zeroize`), and prefer `from_slice` over `from_reader`, whose buffering
    /// is out of reach. There is no `Serialize`: writing a secret out is a decision to make
    /// with [`Secret::with_bytes`].
    ///
    /// ```
    /// use securememory::Secret;
    /// use serde::Deserialize;
    /// use zeroize::Zeroize;
    ///
    /// #[derive(Deserialize)]
    /// struct Config {
    ///     endpoint: String,
    ///     token: Secret,
    /// }
    ///
    /// let mut text = br#"{"endpoint": "https://api.example", "token": "s3cr3t"}"#.to_vec();
    /// let config: Config = serde_json::from_slice(&text).unwrap();
    /// text.zeroize();
    /// assert!(config.token.constant_time_eq(b"s3cr3t")?);
    /// # let _ = config.endpoint;
    /// # Ok::<(), securememory::Error>(())
    /// ```
    impl<'de> Deserialize<'de> for Secret {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
            // Text formats say what they hold (a string, an array); binary ones need asking.
            if deserializer.is_human_readable() {
                deserializer.deserialize_any(SecretVisitor)
            } else {
                deserializer.deserialize_bytes(SecretVisitor)
            }
        }
    }

    struct SecretVisitor;

    fn made<E: de::Error>(made: Result<Secret, Error>) -> Result<Secret, E> {
        made.map_err(E::custom)
    }

    impl<'de> Visitor<'de> for SecretVisitor {
        type Value = Secret;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a secret: a non-empty string, bytes, or a sequence of byte values")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Secret, E> {
            self.visit_bytes(text.as_bytes())
        }

        fn visit_string<E: de::Error>(self, text: String) -> Result<Secret, E> {
            made(Secret::from_string(text))
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Secret, E> {
            made(Secret::new_with(bytes.len(), |destination| {
                destination.copy_from_slice(bytes);
                Ok::<(), Error>(())
            }))
        }

        fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Secret, E> {
            made(Secret::from_vec(bytes))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Secret, A::Error> {
            let mut bytes =
                zeroize::Zeroizing::new(Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096)));
            while let Some(byte) = seq.next_element::<u8>()? {
                if bytes.len() == bytes.capacity() {
                    // Grow by hand: a reallocation would leave the old buffer unwiped.
                    let mut larger =
                        zeroize::Zeroizing::new(Vec::with_capacity((bytes.capacity() * 2).max(32)));
                    larger.extend_from_slice(&bytes);
                    bytes = larger;
                }
                bytes.push(byte);
            }
            made(Secret::new(&mut bytes))
        }
    }
}

#[cfg(feature = "secrecy")]
mod secrecy_support {
    use crate::{Error, ProtectedMemorySecretFactory, Secret};
    use secrecy::{ExposeSecret, SecretSlice, SecretString};

    impl ProtectedMemorySecretFactory {
        /// A secret holding the bytes of a `secrecy` box, which is then dropped (and so
        /// zeroized by `secrecy`).
        ///
        /// ```
        /// use securememory::ProtectedMemorySecretFactory;
        /// use secrecy::SecretSlice;
        ///
        /// let boxed: SecretSlice<u8> = vec![1, 2, 3].into();
        /// let secret = ProtectedMemorySecretFactory::DEFAULT.from_secret_slice(boxed)?;
        /// assert_eq!(secret.len(), 3);
        /// # Ok::<(), securememory::Error>(())
        /// ```
        ///
        /// # Errors
        /// Those of [`new`](ProtectedMemorySecretFactory::new).
        #[track_caller]
        pub fn from_secret_slice(&self, boxed: SecretSlice<u8>) -> Result<Secret, Error> {
            let bytes = boxed.expose_secret();
            self.new_with(bytes.len(), |destination| {
                destination.copy_from_slice(bytes);
                Ok::<(), Error>(())
            })
        }

        /// A secret holding the bytes of a `secrecy` string, which is then dropped (zeroized).
        ///
        /// # Errors
        /// Those of [`new`](ProtectedMemorySecretFactory::new).
        #[track_caller]
        pub fn from_secret_string(&self, text: SecretString) -> Result<Secret, Error> {
            let bytes = text.expose_secret().as_bytes();
            self.new_with(bytes.len(), |destination| {
                destination.copy_from_slice(bytes);
                Ok::<(), Error>(())
            })
        }
    }

    impl Secret {
        /// A `secrecy` copy of the bytes, for an API that takes one: on the heap, unlocked and
        /// unguarded, zeroized when dropped. Keep it only as long as that API needs it.
        ///
        /// ```
        /// use securememory::Secret;
        /// use secrecy::ExposeSecret;
        ///
        /// let secret = Secret::from_vec(vec![7; 4])?;
        /// let copy = secret.to_secret_slice()?;
        /// assert_eq!(copy.expose_secret(), &[7; 4]);
        /// # Ok::<(), securememory::Error>(())
        /// ```
        ///
        /// # Errors
        /// Those of [`with_bytes`](Secret::with_bytes).
        pub fn to_secret_slice(&self) -> Result<SecretSlice<u8>, Error> {
            self.with_bytes(|bytes| SecretSlice::from(bytes.to_vec()))
        }
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use crate::{Error, Secret};
    use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, Visitor};

    fn bytes_of(secret: &Secret) -> Vec<u8> {
        secret.with_bytes(<[u8]>::to_vec).unwrap()
    }

    /// Hands its bytes to the visitor as an owned buffer, as binary formats may.
    struct OwnedBytes(Vec<u8>);

    impl<'de> Deserializer<'de> for OwnedBytes {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.visit_byte_buf(self.0)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
            identifier ignored_any
        }
    }

    #[test]
    fn every_shape_of_input_makes_a_secret_of_its_bytes() {
        let from_text: Secret = serde_json::from_str(r#""s3cr3t""#).unwrap();
        assert_eq!(bytes_of(&from_text), b"s3cr3t");
        let escaped: Secret = serde_json::from_str(r#""a\"b""#).unwrap();
        assert_eq!(bytes_of(&escaped), b"a\"b");
        let owned: Secret =
            serde_json::from_value(serde_json::Value::String("owned".into())).unwrap();
        assert_eq!(bytes_of(&owned), b"owned");
        let borrowed: Secret = Secret::deserialize(
            de::value::BytesDeserializer::<de::value::Error>::new(b"raw"),
        )
        .unwrap();
        assert_eq!(bytes_of(&borrowed), b"raw");
        let buffer: Secret = Secret::deserialize(OwnedBytes(vec![1, 2, 3])).unwrap();
        assert_eq!(bytes_of(&buffer), [1, 2, 3]);
        // A sequence long enough to outgrow the buffer a few times.
        let values: Vec<u8> = (0..=200).collect();
        let sequence: Secret =
            serde_json::from_str(&serde_json::to_string(&values).unwrap()).unwrap();
        assert_eq!(bytes_of(&sequence), values);
        // A sequence that says its length up front.
        let hinted = Secret::deserialize(IntoDeserializer::<de::value::Error>::into_deserializer(
            values.clone(),
        ))
        .unwrap();
        assert_eq!(bytes_of(&hinted), values);
    }

    #[test]
    fn what_is_no_secret_is_refused_saying_why() {
        let empty = serde_json::from_str::<Secret>(r#""""#)
            .unwrap_err()
            .to_string();
        assert!(empty.contains(&Error::InvalidLength.to_string()), "{empty}");
        let number = serde_json::from_str::<Secret>("5").unwrap_err().to_string();
        assert!(
            number.contains(
                "expected a secret: a non-empty string, bytes, or a sequence of byte values"
            ),
            "{number}"
        );
        assert!(serde_json::from_str::<Secret>("[1, 256]").is_err());
    }
}

#[cfg(all(test, feature = "secrecy"))]
mod secrecy_tests {
    use crate::{ProtectedMemorySecretFactory, Secret};
    use secrecy::{ExposeSecret, SecretSlice, SecretString};

    #[test]
    fn secrecy_boxes_convert_both_ways_with_their_bytes() {
        let factory = ProtectedMemorySecretFactory::DEFAULT;
        let from_slice = factory
            .from_secret_slice(SecretSlice::from(vec![4, 5, 6]))
            .unwrap();
        assert!(from_slice.with_bytes(|b| b == [4, 5, 6]).unwrap());
        let from_string = factory
            .from_secret_string(SecretString::from("pass"))
            .unwrap();
        assert!(from_string.with_bytes(|b| b == b"pass").unwrap());
        let secret = Secret::from_vec(vec![9, 8]).unwrap();
        assert_eq!(secret.to_secret_slice().unwrap().expose_secret(), &[9, 8]);
    }
}
