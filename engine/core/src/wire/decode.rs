//! Decoding a frame without letting its size decide what the reader allocates.
//!
//! Owns: the tag-first decoding of the protocol's internally tagged enums
//! ([`Message`](super::Message) by `type`, [`RpcCall`](super::RpcCall) by
//! `method`) and [`at_most`], the bound on every sequence a message holds.
//!
//! Why: serde's derive for an internally tagged enum (`#[serde(tag = "type")]`)
//! cannot know the variant before it has read the tag, which may come anywhere in
//! the map, so it first copies the whole map into a generic tree of values. One
//! byte of CBOR (an empty array) becomes a tree node of tens of bytes: an 8 MiB
//! frame of them costs hundreds of megabytes before any length check runs. Here
//! the tag must be the map's first key (every encoder of this protocol writes it
//! first: serde's internally tagged serializer does), the variant is known at
//! once, and the rest of the map is read straight into the variant's fields.
//! A sequence is read element by element and refused past its bound, so no
//! collection outgrows what the protocol allows however the frame is built.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// An internally tagged enum decoded tag first: implemented by [`tag_first!`],
/// which derives the variant's decoding as if the enum were externally tagged.
pub(crate) trait TagFirst<'de>: Sized {
    /// The tag's key (`type`, `method`).
    const TAG: &'static str;
    /// Decodes the variant from a deserializer whose `deserialize_enum` yields the
    /// tag's value as the variant and the rest of the map as its body.
    fn variant<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
}

/// Decodes `T` from a map whose first key is `T::TAG`.
pub(crate) fn tag_first<'de, T: TagFirst<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_map(TagFirstVisitor::<T>(PhantomData))
}

struct TagFirstVisitor<T>(PhantomData<T>);

impl<'de, T: TagFirst<'de>> Visitor<'de> for TagFirstVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a map whose first key is `{}`", T::TAG)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let key: Option<KeyName> = map.next_key_seed(KeyName::expecting(T::TAG))?;
        if key.is_none() {
            return Err(de::Error::missing_field(T::TAG));
        }
        T::variant(VariantDeserializer { map })
    }
}

/// Reads a map key, checking it is the tag, without allocating it.
struct KeyName {
    expected: &'static str,
}

impl KeyName {
    fn expecting(expected: &'static str) -> Self {
        Self { expected }
    }
}

impl<'de> DeserializeSeed<'de> for KeyName {
    type Value = KeyName;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyName {
    type Value = KeyName;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the key `{}` first", self.expected)
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        if key == self.expected {
            Ok(self)
        } else {
            Err(E::custom(format_args!(
                "the first key must be `{}`, not `{}`",
                self.expected,
                key.chars().take(64).collect::<String>()
            )))
        }
    }
}

/// The rest of a tag-first map, as an externally tagged enum's deserializer: the
/// tag's value names the variant, the remaining entries are its fields.
struct VariantDeserializer<A> {
    map: A,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for VariantDeserializer<A> {
    type Error = A::Error;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom(
            "a tagged message decodes only as its enum",
        ))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        struct identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for VariantDeserializer<A> {
    type Error = A::Error;
    type Variant = VariantBody<A>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        mut self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        let variant = self.map.next_value_seed(seed)?;
        Ok((variant, VariantBody { map: self.map }))
    }
}

/// The map's entries after the tag: the variant's fields.
struct VariantBody<A> {
    map: A,
}

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for VariantBody<A> {
    type Error = A::Error;

    fn unit_variant(mut self) -> Result<(), Self::Error> {
        // Extra entries are ignored, as for a struct's unknown fields; skipping
        // them allocates nothing.
        while self.map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        seed.deserialize(MapAccessDeserializer::new(self.map))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom(
            "tuple variants are not part of the protocol",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_map(self.map)
    }
}

/// Decodes a sequence of at most `MAX` items, refusing the first one past it
/// before decoding it (use as `#[serde(deserialize_with = "at_most::<{ N }, _, _>")]`).
pub(crate) fn at_most<'de, const MAX: usize, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(AtMost::<MAX, T>(PhantomData))
}

struct AtMost<const MAX: usize, T>(PhantomData<T>);

impl<'de, const MAX: usize, T: Deserialize<'de>> Visitor<'de> for AtMost<MAX, T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {MAX} items")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<T>, S::Error> {
        if let Some(announced) = seq.size_hint()
            && announced > MAX
        {
            return Err(de::Error::invalid_length(announced, &self));
        }
        // An announced length is a claim, not bytes read: reserve little up front.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX).min(256));
        while items.len() < MAX {
            match seq.next_element()? {
                Some(item) => items.push(item),
                None => return Ok(items),
            }
        }
        // Full: one more item is one too many (checked without decoding it into T).
        match seq.next_element::<IgnoredAny>()? {
            None => Ok(items),
            Some(_) => Err(de::Error::invalid_length(MAX + 1, &self)),
        }
    }
}

/// Defines an internally tagged enum whose decoding reads the tag first (see the
/// module): the enum as written, serialized with `#[serde(tag = …)]`, and a
/// private mirror of it deriving the externally tagged decoding into it
/// (`#[serde(remote)]`), driven by [`tag_first`].
macro_rules! tag_first_enum {
    (
        tag = $tag:literal, remote = $remote:literal, mirror = $mirror:ident;
        $(#[$attr:meta])*
        pub enum $name:ident { $($body:tt)* }
    ) => {
        #[derive(serde::Serialize)]
        $(#[$attr])*
        #[serde(tag = $tag)]
        pub enum $name { $($body)* }

        #[derive(serde::Deserialize)]
        $(#[$attr])*
        #[serde(remote = $remote)]
        #[allow(dead_code)]
        enum $mirror { $($body)* }

        impl<'de> $crate::wire::decode::TagFirst<'de> for $name {
            const TAG: &'static str = $tag;
            fn variant<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $mirror::deserialize(deserializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::wire::decode::tag_first::<Self, D>(deserializer)
            }
        }
    };
}

pub(crate) use tag_first_enum;
