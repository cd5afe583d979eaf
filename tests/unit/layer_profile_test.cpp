// Layer profiles (KRISP right-sizing): the selection of a layer's right size, the strict parser
// (each rule with its message), the round trip through the file format, SHA-256 against the
// standard's vectors and the check of a profile against its model file.

#include "sliceserve/backends/layer_profile.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

namespace sliceserve::backends {
namespace {

const std::vector<unsigned> kUnits = {4, 8, 12, 16};

unsigned pick(const std::vector<unsigned>& units, const std::vector<double>& ms) {
  auto r = select_right_size(units, ms);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return r.is_ok() ? *r : 0;
}

TEST(LayerProfileTest, RightSizeIsTheFewestUnitsWithinFivePercentOfTheFullSlice) {
  EXPECT_EQ(pick(kUnits, {8.0, 4.0, 2.2, 2.0}), 16u) << "2.2 is 10% slower";
  EXPECT_EQ(pick(kUnits, {8.0, 4.0, 2.1, 2.0}), 12u) << "exactly 5% is within";
  EXPECT_EQ(pick(kUnits, {8.0, 4.0, 2.1001, 2.0}), 16u) << "just past 5%";
  EXPECT_EQ(pick(kUnits, {1.0, 1.0, 1.0, 1.0}), 4u) << "a tie: the fewest units";
  EXPECT_EQ(pick({60}, {3.0}), 60u) << "one count measured";
}

TEST(LayerProfileTest, NoisyNonMonotoneLatenciesTakeTheFirstCountWithinTheLimit) {
  // Noise makes 8 look faster than 12; 8 is within 5% of 16's 5.0, so it wins even though 12 is
  // not.
  EXPECT_EQ(pick(kUnits, {10.0, 5.1, 5.3, 5.0}), 8u);
  // A spike at the full slice raises the limit: 4 units are within 5% of it.
  EXPECT_EQ(pick(kUnits, {6.2, 3.0, 3.1, 6.0}), 4u);
}

TEST(LayerProfileTest, ALayerFasterOnFewerUnitsGetsTheFewest) {
  // Small layers lose to launch and cache effects on many units.
  EXPECT_EQ(pick(kUnits, {4.0, 4.5, 4.8, 5.0}), 4u);
}

TEST(LayerProfileTest, SelectionRefusesWhatIsNoLatency) {
  const double inf = std::numeric_limits<double>::infinity();
  for (const std::vector<double>& ms : std::vector<std::vector<double>>{
           {}, {1, 2, 3}, {1, 2, 3, std::nan("")}, {1, inf, 2, 3}, {1, -1, 2, 3}}) {
    auto r = select_right_size(kUnits, ms);
    ASSERT_FALSE(r.is_ok()) << ms.size();
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  }
}

LayerProfile sample() {
  LayerProfile p;
  p.model = "resnet18-32.onnx";
  p.model_sha256 = std::string(64, 'a');
  p.device = "hip";
  p.batch = 4;
  p.repeats = 5;
  p.units = kUnits;
  p.layers = {{"node 'conv1' (Conv)", {8.0, 4.0, 2.1, 2.0}, 12},
              {"node \"fc\" (Gemm)\n", {0.5, 0.25, 0.125, 1e-300}, 4}};
  return p;
}

TEST(LayerProfileTest, TheFileFormatRoundTrips) {
  const LayerProfile p = sample();
  const std::string text = format_layer_profile(p);
  auto back = parse_layer_profile(text);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string() << "\n" << text;
  EXPECT_EQ(back->model, p.model);
  EXPECT_EQ(back->model_sha256, p.model_sha256);
  EXPECT_EQ(back->device, "hip");
  EXPECT_EQ(back->batch, 4);
  EXPECT_EQ(back->repeats, 5u);
  EXPECT_EQ(back->units, kUnits);
  ASSERT_EQ(back->layers.size(), 2u);
  EXPECT_EQ(back->layers[1].label, p.layers[1].label) << "quotes and newlines escaped";
  EXPECT_EQ(back->layers[1].ms, p.layers[1].ms) << "doubles round-trip exactly";
  EXPECT_EQ(back->layers[0].right_size, 12u);
  ASSERT_NE(back->find("node 'conv1' (Conv)"), nullptr);
  EXPECT_EQ(back->find("node 'conv1' (Conv)")->right_size, 12u);
  EXPECT_EQ(back->find("node 'conv2' (Conv)"), nullptr);
  EXPECT_EQ(format_layer_profile(*back), text);
  // One line per layer.
  EXPECT_NE(text.find("\n    {\"label\": \"node 'conv1' (Conv)\", \"ms\": [8.0,4.0,2.1,2.0], "
                      "\"right_size\": 12},\n"),
            std::string::npos)
      << text;
}

// Each broken variant of a valid document, with the words its error must contain.
struct BadCase {
  std::string from;  // replaced in the valid text
  std::string to;
  std::string error;
};

TEST(LayerProfileTest, EachRuleIsAClearError) {
  const std::string valid = format_layer_profile(sample());
  ASSERT_TRUE(parse_layer_profile(valid).is_ok());
  const std::vector<BadCase> cases = {
      {"\"version\": 1", "\"version\": 2", "unknown version 2 (this build reads version 1)"},
      {"\"version\": 1", "\"version\": \"1\"", "missing integer key 'version'"},
      {"sliceserve-layer-profile", "other", "not a sliceserve-layer-profile file"},
      {"  \"batch\": 4,\n", "", "missing key 'batch'"},
      {"\"batch\": 4", "\"batch\": 4, \"extra\": 1", "unknown key 'extra'"},
      {"\"batch\": 4", "\"batch\": 4, \"batch\": 5", "key 'batch' appears twice"},
      {"\"batch\": 4", "\"batch\": 0", "'batch' must be an integer in 1..4096"},
      {"\"batch\": 4", "\"batch\": 4.5", "'batch' must be an integer"},
      {"\"repeats\": 5", "\"repeats\": -5", "'repeats' must be an integer"},
      {"\"device\": \"hip\"", "\"device\": \"gpu\"",
       "'device' must be \"hip\", \"cuda\" or \"cpu\""},
      {"\"model\": \"resnet18-32.onnx\"", "\"model\": \"\"", "'model' must be a non-empty string"},
      {std::string(64, 'a'), std::string(63, 'a'), "64 lowercase hex digits"},
      {std::string(64, 'a'), std::string(64, 'A'), "64 lowercase hex digits"},
      {"[4,8,12,16]", "[4,8,8,16]", "'units' must increase: units[2] = 8 follows 8"},
      {"[4,8,12,16]", "[4,12,8,16]", "'units' must increase"},
      {"[4,8,12,16]", "[0,8,12,16]", "units[0] must be an integer in 1..4096"},
      {"\"units\": [4,8,12,16]", "\"units\": []", "'units' must be a non-empty array"},
      {"[8.0,4.0,2.1,2.0]", "[8.0,4.0,2.1]", "'ms' must be an array of 4 latencies"},
      {"[8.0,4.0,2.1,2.0]", "[8.0,4.0,1e999,2.0]", "number overflow parsing '1e999'"},
      {"[8.0,4.0,2.1,2.0]", "[8.0,-4.0,2.1,2.0]", "ms[1] must be a finite latency >= 0"},
      {"[8.0,4.0,2.1,2.0]", "[8.0,null,2.1,2.0]", "ms[1] must be a finite latency"},
      {"[8.0,4.0,2.1,2.0]", "[8.0,NaN,2.1,2.0]", "not JSON"},
      {"\"right_size\": 12", "\"right_size\": 10", "right_size 10 is not one of the measured"},
      {"\"right_size\": 12", "\"right_size\": 12, \"note\": 1", "layers[0]: unknown key 'note'"},
      {", \"right_size\": 12}", "}", "layers[0]: missing key 'right_size'"},
      {"node \\\"fc\\\" (Gemm)\\n", "node 'conv1' (Conv)",
       "label \"node 'conv1' (Conv)\" appears "
       "twice"},
      {"{\n", "[\n", "not JSON"},
  };
  for (const BadCase& c : cases) {
    std::string text = valid;
    const size_t at = text.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.from;
    text.replace(at, c.from.size(), c.to);
    auto parsed = parse_layer_profile(text);
    ASSERT_FALSE(parsed.is_ok()) << c.error << "\n" << text;
    EXPECT_EQ(parsed.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(c.error), std::string::npos)
        << "wanted: " << c.error << "\ngot: " << parsed.status().message();
    EXPECT_EQ(parsed.status().message().rfind("layer profile: ", 0), 0u);
  }
  EXPECT_FALSE(parse_layer_profile("[]").is_ok());
  EXPECT_FALSE(parse_layer_profile("").is_ok());
}

TEST(LayerProfileTest, Sha256MatchesTheStandardsVectors) {
  auto hash = [](const std::string& s) {
    return sha256_hex(std::as_bytes(std::span<const char>(s.data(), s.size())));
  };
  EXPECT_EQ(hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hash("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(hash(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // 55 and 56 bytes: the padding fits in the block, or needs one more.
  EXPECT_NE(hash(std::string(55, 'x')), hash(std::string(56, 'x')));
}

class LayerProfileFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/layer_profile_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
  }
  void TearDown() override {
    for (const std::string& f : files_) std::remove(f.c_str());
    rmdir(dir_.c_str());
  }
  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    files_.push_back(path);
    return path;
  }

  std::string dir_;
  std::vector<std::string> files_;
};

TEST_F(LayerProfileFileTest, AProfileOfAnotherModelIsRefused) {
  const std::string model = write("m.onnx", "model bytes");
  const std::string other = write("other.onnx", "other bytes");
  LayerProfile p = sample();
  auto hash = file_sha256(model);
  ASSERT_TRUE(hash.is_ok()) << hash.status().to_string();
  p.model_sha256 = *hash;
  p.model = "m.onnx";
  EXPECT_TRUE(check_layer_profile_model(p, model).is_ok());
  Status wrong = check_layer_profile_model(p, other);
  ASSERT_FALSE(wrong.is_ok());
  EXPECT_EQ(wrong.code(), ErrorCode::kIncompatible);
  EXPECT_NE(wrong.message().find("the layer profile is of model 'm.onnx' (sha256 " +
                                 hash->substr(0, 12) + "), not of " + other),
            std::string::npos)
      << wrong.message();
  EXPECT_EQ(check_layer_profile_model(p, dir_ + "/missing.onnx").code(), ErrorCode::kNotFound);
}

TEST_F(LayerProfileFileTest, WriteThenReadGivesTheSameProfile) {
  const std::string path = dir_ + "/p.json";
  files_.push_back(path);
  ASSERT_TRUE(write_layer_profile(path, sample()).is_ok());
  auto back = read_layer_profile(path);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(format_layer_profile(*back), format_layer_profile(sample()));
  auto missing = read_layer_profile(dir_ + "/none.json");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  const std::string broken = write("broken.json", "{");
  auto bad = read_layer_profile(broken);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find(broken), std::string::npos) << bad.status().message();
}

}  // namespace
}  // namespace sliceserve::backends
