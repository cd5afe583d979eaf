// The parsing parts of the run-time admin API: the /v2/admin routes (http_admin.h), the HTTP
// status of a reply, and a model to load checked by the config's rules (config.h).

#include <gtest/gtest.h>

#include "sliceserve/controller/admin_socket.h"
#include "sliceserve/controller/config.h"
#include "sliceserve/controller/http_admin.h"

namespace sliceserve::controller {
namespace {

TEST(AdminRouteTest, StatusIsAGet) {
  AdminRoute r = admin_route("GET", "/v2/admin/status", "");
  ASSERT_TRUE(r.request);
  EXPECT_EQ(*r.request, (nlohmann::json{{"cmd", "status"}}));
  AdminRoute post = admin_route("POST", "/v2/admin/status", "");
  EXPECT_FALSE(post.request);
  EXPECT_EQ(post.status, 405u);
  EXPECT_EQ(post.allow, "GET");
}

TEST(AdminRouteTest, ModelRoutesTakeTheModelFromThePathOverTheBody) {
  AdminRoute r =
      admin_route("POST", "/v2/admin/models/alpha/resize", R"({"slice":40,"model":"beta"})");
  ASSERT_TRUE(r.request) << r.error;
  EXPECT_EQ(*r.request, (nlohmann::json{{"cmd", "resize"}, {"model", "alpha"}, {"slice", 40}}));
  r = admin_route("POST", "/v2/admin/models/alpha/policy", R"({"on":false,"cmd":"unload"})");
  ASSERT_TRUE(r.request);
  EXPECT_EQ((*r.request)["cmd"], "policy");
  r = admin_route("POST", "/v2/admin/models/alpha/backend", R"({"backend":"cpu:affinity"})");
  ASSERT_TRUE(r.request);
  EXPECT_EQ((*r.request)["backend"], "cpu:affinity");
  r = admin_route("POST", "/v2/admin/models/alpha/unload", "");
  ASSERT_TRUE(r.request);
  EXPECT_EQ(*r.request, (nlohmann::json{{"cmd", "unload"}, {"model", "alpha"}}));
}

TEST(AdminRouteTest, LoadNeedsAModelOrTomlInAJsonObject) {
  AdminRoute r = admin_route("POST", "/v2/admin/models/load", R"({"toml":"[[model]]"})");
  ASSERT_TRUE(r.request);
  EXPECT_EQ((*r.request)["cmd"], "load");
  EXPECT_FALSE(r.request->contains("model"));
  for (const char* body : {"", "{}", "[1]", "{\"slice\":3}", "not json", "{\"model\":"}) {
    AdminRoute bad = admin_route("POST", "/v2/admin/models/load", body);
    EXPECT_FALSE(bad.request) << body;
    EXPECT_EQ(bad.status, 400u) << body;
  }
}

TEST(AdminRouteTest, UnknownRoutesAre404AndGetsOnPostRoutesAre405) {
  for (const char* path : {"/v2/admin/", "/v2/admin/models", "/v2/admin/models/a",
                           "/v2/admin/models/a/grow", "/v2/admin/models//resize",
                           "/v2/admin/decisions"}) {
    AdminRoute r = admin_route("POST", path, "{}");
    EXPECT_FALSE(r.request) << path;
    EXPECT_EQ(r.status, 404u) << path;
  }
  AdminRoute get = admin_route("GET", "/v2/admin/models/a/resize", "");
  EXPECT_EQ(get.status, 405u);
  EXPECT_EQ(get.allow, "POST");
  AdminRoute bad_body = admin_route("POST", "/v2/admin/models/a/resize", "[40]");
  EXPECT_EQ(bad_body.status, 400u);
}

TEST(AdminReplyStatusTest, CodesMapToHttpStatuses) {
  EXPECT_EQ(admin_reply_status({{"ok", true}}), 200u);
  auto error = [](ErrorCode code) {
    return nlohmann::json{{"ok", false}, {"error", "x"}, {"code", admin_error_code(code)}};
  };
  EXPECT_EQ(admin_reply_status(error(ErrorCode::kInvalidArgument)), 400u);
  EXPECT_EQ(admin_reply_status(error(ErrorCode::kNotFound)), 404u);
  EXPECT_EQ(admin_reply_status(error(ErrorCode::kBusy)), 409u);
  EXPECT_EQ(admin_reply_status(error(ErrorCode::kAlreadyExists)), 409u);
  EXPECT_EQ(admin_reply_status(error(ErrorCode::kUnavailable)), 503u);
  EXPECT_EQ(admin_reply_status(error(ErrorCode::kTimeout)), 504u);
  EXPECT_EQ(admin_reply_status(error(ErrorCode::kInternal)), 500u);
  EXPECT_EQ(admin_reply_status({{"ok", false}, {"error", "no code"}}), 500u);
}

Config base_config() {
  auto c = parse_config(R"(
[server]
instance = "t"
[[model]]
name = "a"
slice = 10
inputs = [ { name = "x", dtype = "FP32", shape = [4] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [4] } ]
)",
                        "base.toml");
  EXPECT_TRUE(c.is_ok()) << c.status().message();
  return std::move(c).value();
}

TEST(LoadedModelConfigTest, JsonModelIsCheckedByTheConfigRules) {
  const Config base = base_config();
  auto ok = parse_model_json(base,
                             {{"name", "b"},
                              {"kind", "null"},
                              {"slice", 15},
                              {"max_batch", 4},
                              {"inputs", {{{"name", "i"}, {"dtype", "INT32"}, {"shape", {2, 3}}}}},
                              {"outputs", {{{"name", "o"}, {"dtype", "FP32"}, {"shape", {6}}}}}},
                             "load request");
  ASSERT_TRUE(ok.is_ok()) << ok.status().message();
  EXPECT_EQ(ok->name, "b");
  EXPECT_EQ(ok->kind, "null");
  EXPECT_EQ(ok->slice, 15);
  EXPECT_EQ(ok->max_batch, 4u);
  ASSERT_EQ(ok->inputs.size(), 1u);
  EXPECT_EQ(ok->inputs[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ok->inputs[0].dtype, shm::DataType::kInt32);
}

TEST(LoadedModelConfigTest, JsonErrorsNameTheKeyWithoutALine) {
  const Config base = base_config();
  auto slice = parse_model_json(base, {{"name", "b"}, {"kind", "null"}, {"slice", 300}}, "load");
  ASSERT_FALSE(slice.is_ok());
  EXPECT_EQ(slice.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(slice.status().message().find("load: key 'model.slice': must be in (0, 100]"),
            std::string::npos)
      << slice.status().message();
  auto typo = parse_model_json(base, {{"name", "b"}, {"slize", 3}}, "load");
  ASSERT_FALSE(typo.is_ok());
  EXPECT_NE(typo.status().message().find("did you mean 'slice'"), std::string::npos)
      << typo.status().message();
  auto null = parse_model_json(base, {{"name", nullptr}}, "load");
  ASSERT_FALSE(null.is_ok());
  EXPECT_NE(null.status().message().find("model.name"), std::string::npos);
  auto array = parse_model_json(base, nlohmann::json::array(), "load");
  EXPECT_FALSE(array.is_ok());
  auto name = parse_model_json(base, {{"name", "no spaces"}, {"slice", 5}}, "load");
  EXPECT_FALSE(name.is_ok());
}

TEST(LoadedModelConfigTest, TomlTextNeedsExactlyOneModelTable) {
  const Config base = base_config();
  auto ok = parse_model_toml(base, R"([[model]]
name = "c"
kind = "null"
slice = 5
inputs = [ { name = "x", dtype = "FP32", shape = [1] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [1] } ]
)",
                             "m.toml");
  ASSERT_TRUE(ok.is_ok()) << ok.status().message();
  EXPECT_EQ(ok->name, "c");
  auto two = parse_model_toml(base, "[[model]]\nname = \"c\"\n[[model]]\nname = \"d\"\n", "m.toml");
  ASSERT_FALSE(two.is_ok());
  EXPECT_NE(two.status().message().find("exactly one model table"), std::string::npos);
  auto server = parse_model_toml(base, "[server]\ninstance = \"x\"\n", "m.toml");
  ASSERT_FALSE(server.is_ok());
  EXPECT_NE(server.status().message().find("m.toml:1: key 'server': unknown key"),
            std::string::npos)
      << server.status().message();
  auto line = parse_model_toml(base, "[[model]]\nname = \"c\"\nslice = -1\n", "m.toml");
  ASSERT_FALSE(line.is_ok());
  EXPECT_NE(line.status().message().find("m.toml:3: key 'model.slice'"), std::string::npos)
      << line.status().message();
  auto syntax = parse_model_toml(base, "[[model]\n", "m.toml");
  EXPECT_FALSE(syntax.is_ok());
}

}  // namespace
}  // namespace sliceserve::controller
