//! Instance names like lxc's: an adjective and an animal (`proud-ferret`).

const ADJECTIVES: &[&str] = &[
    "able", "active", "amazed", "amused", "apt", "awake", "bold", "brave", "bright", "busy", "calm", "careful",
    "charming", "cheerful", "clever", "cool", "crisp", "curious", "daring", "dear", "eager", "easy", "epic", "fair",
    "famous", "fancy", "fast", "fine", "fond", "free", "fresh", "game", "gentle", "glad", "golden", "good", "grand",
    "happy", "hardy", "helped", "holy", "honest", "humble", "ideal", "jolly", "keen", "kind", "large", "lasting",
    "lucky", "magic", "merry", "modest", "moved", "native", "neat", "nice", "noble", "novel", "open", "patient",
    "perfect", "polite", "poetic", "proud", "quick", "quiet", "rapid", "rare", "ready", "real", "renewed", "rich",
    "robust", "safe", "sharp", "shining", "smart", "smooth", "solid", "steady", "still", "sunny", "super", "sure",
    "swift", "tender", "tidy", "top", "true", "trusty", "united", "upward", "valid", "vast", "vital", "warm", "wise",
    "witty", "worthy",
];

const NOUNS: &[&str] = &[
    "alpaca", "ant", "badger", "bat", "bear", "beaver", "bee", "bison", "boar", "bobcat", "buck", "bull", "camel",
    "cat", "cheetah", "chicken", "cicada", "cobra", "cod", "condor", "cougar", "cow", "coyote", "crab", "crane",
    "crow", "deer", "dingo", "dodo", "dog", "dolphin", "donkey", "dove", "duck", "eagle", "eel", "elk", "emu",
    "falcon", "ferret", "finch", "fish", "flea", "fox", "frog", "gator", "gazelle", "gecko", "gibbon", "goat", "goose",
    "gopher", "grouse", "gull", "hare", "hawk", "heron", "horse", "hound", "husky", "ibex", "iguana", "impala",
    "jackal", "jaguar", "jay", "kid", "kit", "kiwi", "koala", "lamb", "lark", "lemur", "lion", "llama", "lynx",
    "macaw", "marlin", "mink", "mole", "moose", "moth", "mouse", "mule", "newt", "octopus", "orca", "oryx", "osprey",
    "otter", "owl", "ox", "panda", "panther", "parrot", "pelican", "pigeon", "puma", "quail", "rabbit", "raven",
    "seal", "shark", "sheep", "skunk", "sloth", "snail", "sparrow", "squid", "stork", "swan", "tapir", "tiger", "toad",
    "trout", "turkey", "turtle", "viper", "walrus", "wasp", "weasel", "whale", "wolf", "wombat", "worm", "yak",
    "zebra",
];

/// A random `adjective-animal`.
pub fn random() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let a = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let n = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    format!("{}-{}", ADJECTIVES[a % ADJECTIVES.len()], NOUNS[n % NOUNS.len()])
}

#[cfg(test)]
mod tests {
    #[test]
    fn valid_instance_names() {
        for _ in 0..200 {
            let n = super::random();
            assert!(n.len() <= 63);
            assert!(n.starts_with(|c: char| c.is_ascii_lowercase()), "{n}");
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{n}");
            assert_eq!(n.matches('-').count(), 1, "{n}");
        }
    }
}
