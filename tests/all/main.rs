mod fuzz;
mod kf_files;
mod kf_run;
mod lang_spec;
mod modules;
