mod kf_files;
mod lang_spec;
mod modules;
